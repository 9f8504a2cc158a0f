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
see as claimed (same path, same device and inode: the same machine; with
`MINIDEVIN_SHARED_WORKSPACES`, same path, inode and owning user, any device:
another machine mounting the same share); their live tasks end `failed` with
`INTERRUPTED` (and, with `MINIDEVIN_RESUME_INTERRUPTED`, are resumed here),
their queued tasks run here. A session whose directory it cannot see stays
placed on the dead node (its live tasks are interrupted all the same: none
stays `running`), for that node to pick up when it returns.

A node shut down gracefully (SIGTERM, `Runtime.close`) hands its queue over at
once: nothing starts here any more, its running tasks are stopped (`stopped`,
as without nodes: they can be resumed), its queued tasks stay `queued`; then it
lets its lease go and asks the live nodes, one at a time, to take it over now
(`take_over_now`, a node bus command), until none of its sessions is left.

With shared workspaces, a node that is neither alive nor known (its id named by
sessions only, e.g. after Redis lost the set of nodes) is made known when a
call for one of its sessions finds it gone (`watch_gone`); after a lease of
grace, in which a live node retakes its lease, it is taken over as a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from minidevin.actors.messages import Closing
from minidevin.nodes import NODES, Nodes
from minidevin.resume import requeue, resume_interrupted
from minidevin.runtime.errors import ApiError, Conflict, Unavailable
from minidevin.runtime.recovery import LIVE_STATUSES, Recovered, settle_live, started
from minidevin.runtime.storage import StoreError
from minidevin.runtime.storage.postgres_fencing import PostgresFencing
from minidevin.runtime.tools.paths import WorkspaceChanged, check_workspace, open_beneath

if TYPE_CHECKING:
    import pykka

    from minidevin.api import Runtime

log = structlog.get_logger(__name__)
FENCED_EXIT = 70
TAKEOVER_LEASES = 10  # a takeover holds its key at most this many leases (deleted when done)
FENCE_AT = 0.8  # of the lease, since the last renewal sent: a node stops before it can expire
STOP_SECONDS = 30.0  # a graceful shutdown waits this long at most for its running tasks to end
TAKEOVER_WAIT = 8.0  # seconds `take_over_now` waits for a takeover already under way
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


def grace_key(node: str) -> str:
    """Set for a lease when a node found gone is made known: not taken over before it ends."""
    return f"minidevin.grace.{node}"


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
                    and await client.set(key, self.token, nx=True, px=millis)
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
                await self.check_others()
            except Exception as exc:  # (Redis or the store away: next round)
                log.warning("lease_watch_failed", error=str(exc))

    async def check_others(self) -> None:
        client = self.nodes.bus.client
        for raw in await client.smembers(NODES):
            node = raw.decode()
            if node == self.node_id or await client.exists(alive_key(node), grace_key(node)):
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
        # first, nothing more of `node` commits, even a batch a paused process has in flight
        await self._fencing().fence_node(node)
        sessions = await store.sessions_on(node)
        moved = set()
        for session in sessions:
            seen = await self._visible(session)
            if seen is None or self.node_id != await store.place_session(
                session["id"], self.node_id, node
            ):
                continue
            moved.add(session["id"])
            if seen[0] != seen[1]:  # (shared storage: its tasks here check this node's view)
                await store.put_workspace_claim(
                    session["working_directory"], session["user_id"], seen[1]
                )
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

    async def _visible(
        self, session: dict[str, Any]
    ) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The session's working directory's identity as claimed and as seen here, if it is
        here as it was claimed: the same directory (device and inode); with shared workspaces,
        a directory reached without a symbolic link with the same inode, claimed by the
        session's user (another machine's mount of the share has another device number)."""
        claim = await self.runtime.store.workspace_claim(session["working_directory"])
        if claim is None:
            return None
        identity = (int(claim["st_dev"]), int(claim["st_ino"]))
        path = Path(session["working_directory"])
        if self.runtime.settings.shared_workspaces:
            here = await asyncio.to_thread(identity_here, path)
            if here is None or here[1] != identity[1] or claim["user_id"] != session["user_id"]:
                return None
            return identity, here
        try:
            await asyncio.to_thread(check_workspace, path, identity)
        except (OSError, WorkspaceChanged):
            return None
        return identity, identity

    # -- a graceful shutdown, and a node found gone -----------------------------------------

    async def stop_here(self, sessions: dict[str, pykka.ActorRef]) -> None:
        """A graceful shutdown's first step: no forwarded command runs here any more and no
        task starts; the tasks running here stop (`stopped`, their final status written), the
        queued ones stay `queued` in the database for the node that takes over (the session
        actors are stopped, which drops their queues from memory only; a `StopAll` would
        stop the queued tasks too)."""
        runtime, store = self.runtime, self.runtime.store
        self.nodes.closing = True
        for task in self._tasks:  # (no takeover brings sessions here now; the lease is kept)
            if task.get_name() == "lease-watch":
                task.cancel()
        runtime.slots.limit = 0  # (a slot one session gives back starts nothing in another)
        refs = list(sessions.values())
        for ref in refs:  # (its running task is told to stop: `SessionActor.on_stop`)
            ref.tell(Closing("Server shutting down"))
            ref.stop(block=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SECONDS
        await asyncio.to_thread(_wait_stopped, refs, STOP_SECONDS)  # (nothing starts now)
        await store.flush()
        running = [
            row["id"]
            for row in await store.tasks_with_status(LIVE_STATUSES)
            if row["session_id"] in sessions
            and (row["status"] != "queued" or started(await store.task_log(row["id"])))
        ]
        while running and loop.time() < deadline:  # (until their final status is written)
            await asyncio.sleep(0.05)
            await store.flush()
            live = {row["id"] for row in await store.tasks_with_status(LIVE_STATUSES)}
            running = [task_id for task_id in running if task_id in live]
        if running:  # (the node taking over interrupts them)
            log.warning("tasks_not_stopped_in_time", tasks=running, seconds=STOP_SECONDS)

    async def hand_over(self) -> None:
        """A graceful shutdown, once this node's lease is let go (`close`): the live nodes are
        asked, one at a time, to take its sessions over now (each takes those whose working
        directory it sees), until none is left placed here. What none of them sees stays
        here, its queue kept, for this node's next start (or a takeover by a node that sees
        it)."""
        client, store = self.nodes.bus.client, self.runtime.store
        taken_by, left = [], len(await store.sessions_on(self.node_id))
        for raw in sorted(await client.smembers(NODES)) if left else ():
            node = raw.decode()
            if node == self.node_id or not await client.exists(alive_key(node)):
                continue
            try:
                left = int(await self.nodes.bus.call(node, "take_over", {"node": self.node_id}))
            except ApiError as exc:  # (shutting down too, gone meanwhile: the next one)
                log.warning("hand_over_refused", node=node, error=exc.detail)
                continue
            taken_by.append(node)
            if not left:
                break
        if not left:
            await client.srem(NODES, self.node_id)  # (nothing to watch here any more)
        log.info("node_handed_over", node=self.node_id, taken_by=taken_by, left=left)

    async def take_over_now(self, node: str) -> int:
        """`node` let its lease go on a graceful shutdown and asks this node to take it over
        now, as after a lease expiry (after any takeover of it already under way); returns
        how many of its sessions stay placed on it. `Conflict` if it holds its lease."""
        client, millis = self.nodes.bus.client, int(TAKEOVER_LEASES * self.seconds * 1000)
        if node == self.node_id or await client.exists(alive_key(node)):
            raise Conflict(f"node {node} holds its lease: it is not taken over")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TAKEOVER_WAIT
        while not await client.set(takeover_key(node), self.node_id, nx=True, px=millis):
            if loop.time() > deadline:
                raise Unavailable(f"node {node} is being taken over by another node")
            await asyncio.sleep(0.05)
        try:
            await self.take_over(node)
        finally:
            await client.delete(takeover_key(node))
        return len(await self.runtime.store.sessions_on(node))

    async def watch_gone(self, node: str) -> None:
        """With shared workspaces: a call for a session of `node` found it gone. A node that
        holds no lease and is not known is made known, with a lease of grace (a live node
        whose lease Redis lost takes it again meanwhile); then the watch takes it over."""
        client, millis = self.nodes.bus.client, int(self.seconds * 1000)
        if node == self.node_id or await client.exists(alive_key(node)):
            return
        if await client.sismember(NODES, node):
            return  # (known: taken over once its lease is over)
        await client.set(grace_key(node), self.node_id, nx=True, px=millis)
        await client.sadd(NODES, node)
        log.warning("node_found_gone", node=node, grace_seconds=self.seconds)


def _wait_stopped(refs: list[pykka.ActorRef], seconds: float) -> None:
    """Until every actor of `refs` has stopped, `seconds` at most (blocking)."""
    deadline = time.monotonic() + seconds
    for ref in refs:
        ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))


def identity_here(path: Path) -> tuple[int, int] | None:
    """`(st_dev, st_ino)` of the directory at the absolute `path`, reached without any
    symbolic link; None if it is missing, not a directory, or a link lies on its path."""
    parts = tuple(part for part in os.path.abspath(path).split("/") if part)
    flags = os.O_PATH | os.O_DIRECTORY
    try:
        top = os.open("/", flags | os.O_CLOEXEC)
        try:
            fd = open_beneath(top, parts, flags)
        finally:
            os.close(top)
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino
