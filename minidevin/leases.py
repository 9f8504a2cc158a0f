"""Node leases: which nodes are alive, a node that lost its lease stops, a dead node's sessions
are taken over.

Each node holds a lease in Redis (`minidevin.alive.<node>`, a token of this
process, expiring after `MINIDEVIN_LEASE_SECONDS`) and renews it every third of
that, only while the token is still its own. A node that cannot renew in time
(a long pause, a partition, its lease taken over) is fenced: it exits at once,
without another write, and its supervisor starts it again; at start it settles
only the sessions still placed on it. A node id whose lease another process
holds is refused at start (after waiting out a lease a killed process left).

Every node watches the others' leases. When one expires, one node wins the
takeover (`minidevin.takeover.<node>`, set for a while only if the node holds
no lease: one Redis script, as taking a lease is one that checks no takeover is
under way) and moves to itself every session of the dead node whose working
directory it may take (`Workspaces.seen_for_takeover`: the claimed path reached
without a link, the same inode and owner uid and gid, and the same device
unless `MINIDEVIN_SHARED_WORKSPACES`, where another machine mounting the same
share sees another device; and the checks a new session's directory passes,
with this node's settings); their live tasks end `failed` with `INTERRUPTED`
(and, with `MINIDEVIN_RESUME_INTERRUPTED`, are resumed here), their queued
tasks run here. A session whose directory it cannot see stays placed on the dead
node (its live tasks are interrupted all the same: none stays `running`), for
that node to pick up when it returns. A node taken over is marked so
(`minidevin.taken.<node>`, until it takes its lease again): it is fenced once,
and taken over again only by a node that sees something of it to take.

The graceful hand-over, and a node found gone, are `handover.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import TYPE_CHECKING, Any

import structlog

from minidevin.handover import HandOver
from minidevin.lease_keys import (
    RENEW,
    TAKEOVER_LEASES,
    alive_key,
    grace_key,
    take_lease,
    take_takeover,
    taken_key,
    takeover_key,
)
from minidevin.nodes import NODES, Nodes
from minidevin.resume import requeue, resume_interrupted
from minidevin.runtime.recovery import LIVE_STATUSES, Recovered, settle_live
from minidevin.runtime.storage import StoreError
from minidevin.runtime.storage.postgres_fencing import PostgresFencing

if TYPE_CHECKING:
    from minidevin.api import Runtime

log = structlog.get_logger(__name__)
FENCED_EXIT = 70
FENCE_AT = 0.8  # of the lease, since the last renewal sent: a node stops before it can expire


class Leases(HandOver):
    """This node's lease, and the watch over the others'."""

    def __init__(self, runtime: Runtime, nodes: Nodes) -> None:
        self.runtime = runtime
        self.nodes = nodes
        self.node_id = nodes.node_id
        self.seconds = runtime.settings.lease_seconds
        self.token = uuid.uuid4().hex
        self._tasks: list[asyncio.Task[None]] = []
        self._renewed = 0.0
        self.taken_over: list[str] = []  # nodes this one took over (for logs and tests)
        super().__init__()

    async def start(self) -> None:
        """Take this node's lease (`StoreError` if another process holds it), then renew it
        and watch the others."""
        client = self.nodes.bus.client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (TAKEOVER_LEASES + 1) * self.seconds
        millis = int(self.seconds * 1000)
        while not await take_lease(client, self.node_id, self.token, millis):
            # (a killed process's lease, or another node still taking this one over)
            if loop.time() > deadline:
                raise StoreError(
                    f"node id {self.node_id} is in use by another running process "
                    "(MINIDEVIN_NODE_ID must differ between nodes)"
                )
            await asyncio.sleep(min(0.5, self.seconds / 4))
        self._renewed = loop.time()
        store = self._fencing()
        await store.fence_as(self.node_id)  # (a process before this one is fenced off now)
        store.on_fenced = lambda why: self._fenced(f"the database refused its writes: {why}")
        await client.sadd(NODES, self.node_id)
        self._tasks = [
            asyncio.create_task(self._renew_forever(), name="lease-renew"),
            asyncio.create_task(self._watch_forever(), name="lease-watch"),
        ]

    async def close(self) -> None:
        """Let the lease go. What this node wrote is committed first: the node that takes
        its sessions over fences it, and after that its writes are refused (logged, no
        longer an exit: it is closing)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        store = self._fencing()
        with contextlib.suppress(StoreError):  # (an outage: held, as on any close)
            await store.flush()
        store.on_fenced = lambda why: log.info("store_fenced_after_hand_over", reason=why)
        with contextlib.suppress(Exception):  # (gone at once: no one waits out the lease)
            client = self.nodes.bus.client
            if (await client.get(alive_key(self.node_id))) == self.token.encode():
                await client.delete(alive_key(self.node_id))

    # -- this node's lease ---------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        """Renew every third of the lease; fenced once 80 % of it has passed since the last
        renewal that Redis took (measured from when it was sent, so this node always stops
        before its lease can expire for the others)."""
        loop = asyncio.get_running_loop()
        client, key, millis = (
            self.nodes.bus.client,
            alive_key(self.node_id),
            int(self.seconds * 1000),
        )
        while True:
            await asyncio.sleep(self.seconds / 3)
            sent = loop.time()
            left = self._renewed + FENCE_AT * self.seconds - sent
            try:
                renewed = await asyncio.wait_for(
                    client.eval(RENEW, 1, key, self.token, millis), max(0.05, left)
                )
                if (
                    renewed == 0
                    and left > 0
                    and await take_lease(client, self.node_id, self.token, millis)
                ):
                    renewed = 1  # (gone with a Redis restart, not taken: this node's again)
                    await client.sadd(NODES, self.node_id)  # (the set went with it)
            except Exception as exc:
                renewed = None
                log.warning("lease_renew_failed", error=str(exc))
            if renewed == 1 and sent - self._renewed <= FENCE_AT * self.seconds:
                self._renewed = sent
            elif renewed == 0:
                self._fenced("another process holds its lease")
            elif loop.time() - self._renewed > FENCE_AT * self.seconds:
                self._fenced("it could not renew its lease in time")

    def _fencing(self) -> PostgresFencing:
        """The store, which with nodes is PostgreSQL's (`join_nodes` checks)."""
        store = self.runtime.store
        assert isinstance(store, PostgresFencing)
        return store

    def _fenced(self, why: str) -> None:
        """Another node may own this node's sessions now: stop before writing anything more."""
        log.error("node_fenced", node=self.node_id, reason=why)
        os._exit(FENCED_EXIT)

    async def leads(self, role: str = "webhooks") -> bool:
        """Whether this node does `role` now: the work only one node may do (deliver the
        webhook outbox). The first node to ask holds it while it keeps asking, like a lease."""
        client, millis = self.nodes.bus.client, int(self.seconds * 1000)
        key = f"minidevin.leader.{role}"
        try:
            if await client.set(key, self.token, nx=True, px=millis):
                return True
            return bool(await client.eval(RENEW, 1, key, self.token, millis))
        except Exception:  # (Redis away: nobody can tell; wait for it)
            return False

    # -- the others' -------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.seconds / 3))
            try:
                async with self.taking():  # (a closing node waits for a round under way)
                    await self.check_others()
            except Exception as exc:  # (Redis or the store away: next round)
                log.warning("lease_watch_failed", error=str(exc))

    async def check_others(self) -> None:
        """Take over each known node that holds no lease (nor a lease of grace); one taken
        over before only if this node sees one of its sessions to take."""
        client = self.nodes.bus.client
        for raw in await client.smembers(NODES):
            node = raw.decode()
            if self.nodes.closing:
                return
            if node == self.node_id or await client.exists(alive_key(node), grace_key(node)):
                continue
            if await client.exists(taken_key(node)) and not await self._anything_to_take(node):
                continue  # (fenced already; what is left of it this node cannot take either)
            millis = int(TAKEOVER_LEASES * self.seconds * 1000)
            if await take_takeover(client, node, self.node_id, millis) == 1:
                try:
                    await self.take_over(node)
                finally:  # (the node may start again now: its recovery sees what moved)
                    await client.delete(takeover_key(node))

    async def take_over(self, node: str) -> None:
        """The dead `node`'s sessions (this node holds its takeover): moved here where their
        directories may be taken (each by compare-and-set: only if still placed on `node`),
        their live tasks interrupted, their queue run here (see the module's notes)."""
        runtime, client = self.runtime, self.nodes.bus.client
        store = runtime.store
        if not await client.exists(taken_key(node)):  # (else fenced since it last held a lease)
            # first, nothing more of `node` commits, even a batch a paused process has in flight
            await self._fencing().fence_node(node)
            await client.set(taken_key(node), self.node_id)
        sessions = await store.sessions_on(node)
        moved = set()
        for session in sessions:
            if await self._visible(session) is None or self.node_id != await store.place_session(
                session["id"], self.node_id, node
            ):
                continue
            moved.add(session["id"])
        left = {session["id"] for session in sessions} - moved
        rows = [
            row
            for row in await store.tasks_with_status(LIVE_STATUSES)
            if row["session_id"] in moved or row["session_id"] in left
        ]
        settled = Recovered()
        await settle_live(store, rows, settled, why=f"The node running the task ({node}) stopped")
        for row in sorted(settled.queued, key=lambda r: r["created_at"]):
            if row["session_id"] in moved:
                await requeue(runtime, row)
        if runtime.settings.resume_interrupted:
            here = [row for row in settled.interrupted if row["session_id"] in moved]
            await resume_interrupted(runtime, sorted(here, key=lambda r: r["created_at"]))
        if not left:
            await client.srem(NODES, node)
            await client.delete(taken_key(node))
        self.taken_over.append(node)
        log.warning(
            "node_taken_over", node=node, sessions=len(moved), left=len(left),
            interrupted=len(settled.interrupted), queued=len(settled.queued),
        )  # fmt: skip

    async def _visible(self, session: dict[str, Any]) -> tuple[int, int] | None:
        """The session's working directory's identity here, if this node may take it over."""
        tenant = session["user_id"] != await self.runtime.owner(None)
        return await self.runtime.workspaces.seen_for_takeover(
            session["user_id"], session["working_directory"], tenant=tenant
        )

    async def _anything_to_take(self, node: str) -> bool:
        """Whether a takeover of `node` here would do anything: it has no session left (it
        is dropped from the nodes), or one of them this node may take."""
        sessions = await self.runtime.store.sessions_on(node)
        for session in sessions:
            if await self._visible(session) is not None:
                return True
        return not sessions
