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
takeover (`minidevin.takeover.<node>`, set-if-absent for a lease's time) and
moves to itself every session of the dead node whose working directory it can
see as claimed (same path, same device and inode: the same machine, or shared
storage); their live tasks end `failed` with `INTERRUPTED` (and, with
`MINIDEVIN_RESUME_INTERRUPTED`, are resumed here), their queued tasks run here.
A session whose directory it cannot see stays placed on the dead node (its
live tasks are interrupted all the same: none stays `running`), for that node
to pick up when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from minidevin.nodes import NODES, Nodes
from minidevin.resume import requeue, resume_interrupted
from minidevin.runtime.recovery import LIVE_STATUSES, Recovered, settle_live
from minidevin.runtime.storage import StoreError
from minidevin.runtime.tools.paths import WorkspaceChanged, check_workspace

if TYPE_CHECKING:
    from minidevin.api import Runtime

log = structlog.get_logger(__name__)
FENCED_EXIT = 70
TAKEOVER_LEASES = 10  # a takeover holds its key at most this many leases (deleted when done)
FENCE_AT = 0.8  # of the lease, since the last renewal sent: a node stops before it can expire
# renew the lease only while it is still this process's (an atomic compare-and-expire)
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def alive_key(node: str) -> str:
    return f"minidevin.alive.{node}"


def takeover_key(node: str) -> str:
    return f"minidevin.takeover.{node}"


class Leases:
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

    async def start(self) -> None:
        """Take this node's lease (`StoreError` if another process holds it), then renew it
        and watch the others."""
        client = self.nodes.bus.client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (TAKEOVER_LEASES + 1) * self.seconds
        millis = int(self.seconds * 1000)
        while await client.exists(takeover_key(self.node_id)) or not await client.set(
            alive_key(self.node_id), self.token, nx=True, px=millis
        ):  # (a killed process's lease, or another node still taking this one over)
            if loop.time() > deadline:
                raise StoreError(
                    f"node id {self.node_id} is in use by another running process "
                    "(MINIDEVIN_NODE_ID must differ between nodes)"
                )
            await asyncio.sleep(min(0.5, self.seconds / 4))
        self._renewed = loop.time()
        await client.sadd(NODES, self.node_id)
        self._tasks = [
            asyncio.create_task(self._renew_forever(), name="lease-renew"),
            asyncio.create_task(self._watch_forever(), name="lease-watch"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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
                    and await client.set(key, self.token, nx=True, px=millis)
                ):
                    renewed = 1  # (gone with a Redis restart, not taken: this node's again)
            except Exception as exc:
                renewed = None
                log.warning("lease_renew_failed", error=str(exc))
            if renewed == 1 and sent - self._renewed <= FENCE_AT * self.seconds:
                self._renewed = sent
            elif renewed == 0:
                self._fenced("another process holds its lease")
            elif loop.time() - self._renewed > FENCE_AT * self.seconds:
                self._fenced("it could not renew its lease in time")

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
                await self.check_others()
            except Exception as exc:  # (Redis or the store away: next round)
                log.warning("lease_watch_failed", error=str(exc))

    async def check_others(self) -> None:
        client = self.nodes.bus.client
        for raw in await client.smembers(NODES):
            node = raw.decode()
            if node == self.node_id or await client.exists(alive_key(node)):
                continue
            key, millis = takeover_key(node), int(TAKEOVER_LEASES * self.seconds * 1000)
            if await client.set(key, self.node_id, nx=True, px=millis):
                try:
                    await self.take_over(node)
                finally:  # (the node may start again now: its recovery sees what moved)
                    await client.delete(key)

    async def take_over(self, node: str) -> None:
        """The dead `node`'s sessions: moved here where their directories are visible (each
        by compare-and-set: only if still placed on `node`), their live tasks interrupted,
        their queue run here (see the module's notes)."""
        runtime = self.runtime
        store = runtime.store
        sessions = await store.sessions_on(node)
        moved = set()
        for session in sessions:
            mine = await self._visible(session) and self.node_id == await store.place_session(
                session["id"], self.node_id, node
            )
            if mine:
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
            await self.nodes.bus.client.srem(NODES, node)
        self.taken_over.append(node)
        log.warning(
            "node_taken_over", node=node, sessions=len(moved), left=len(left),
            interrupted=len(settled.interrupted), queued=len(settled.queued),
        )  # fmt: skip

    async def _visible(self, session: dict[str, Any]) -> bool:
        """Whether the session's working directory is here, as it was claimed."""
        claim = await self.runtime.store.workspace_claim(session["working_directory"])
        if claim is None:
            return False
        identity = (int(claim["st_dev"]), int(claim["st_ino"]))
        path = Path(session["working_directory"])
        try:
            await asyncio.to_thread(check_workspace, path, identity)
        except (OSError, WorkspaceChanged):
            return False
        return True
