"""A node's graceful hand-over of its sessions, and a node found gone (part of `Leases`).

A node shut down gracefully (SIGTERM, `Runtime.close`) hands its queue over at
once: nothing starts here any more, and takeovers this node has under way (a
`take_over_now` another node asked for, a round of its own watch) end first, so
what they move here is handed over too; its running tasks are stopped (`stopped`,
as without nodes: they can be resumed), its queued tasks stay `queued`; then it
lets its lease go and asks the live nodes, one at a time, to take it over now
(`take_over_now`, a node bus command), until none of its sessions is left. It
leaves the set of nodes only if none is left placed on it, counted right before.

With shared workspaces, a node that is neither alive nor known (its id named by
sessions only, e.g. after Redis lost the set of nodes) is made known when a
call for one of its sessions finds it gone (`watch_gone`); after a lease of
grace, in which a live node retakes its lease, it is taken over as a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from minidevin.actors.messages import Closing
from minidevin.lease_keys import TAKEOVER_LEASES, alive_key, grace_key, take_takeover, takeover_key
from minidevin.nodes import NODES, Nodes
from minidevin.runtime.errors import ApiError, Conflict, Unavailable
from minidevin.runtime.recovery import LIVE_STATUSES, started

if TYPE_CHECKING:
    import pykka

    from minidevin.api import Runtime

log = structlog.get_logger(__name__)
STOP_SECONDS = 30.0  # a graceful shutdown waits this long at most for its running tasks to end
TAKEOVER_WAIT = 8.0  # seconds `take_over_now` waits for a takeover already under way


class HandOver:
    """`Leases`' part for a graceful shutdown and for a node found gone."""

    runtime: Runtime
    nodes: Nodes
    node_id: str
    seconds: float
    _tasks: list[asyncio.Task[None]]

    def __init__(self) -> None:
        self.takeovers_under_way = 0  # `take_over_now` calls and watch rounds running here
        self.waiting_for_takeovers = False  # (a closing node, until they end: for tests)
        self._no_takeover = asyncio.Event()
        self._no_takeover.set()

    async def take_over(self, node: str) -> None:  # (`Leases.take_over`)
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def taking(self) -> AsyncIterator[None]:
        """Counts a takeover (or a watch round) under way: a closing node waits for it."""
        self.takeovers_under_way += 1
        self._no_takeover.clear()
        try:
            yield
        finally:
            self.takeovers_under_way -= 1
            if not self.takeovers_under_way:
                self._no_takeover.set()

    async def stop_here(self, sessions: dict[str, pykka.ActorRef]) -> None:
        """A graceful shutdown's first step: no forwarded command runs here any more and no
        task starts; takeovers under way here end (what they move here is `sessions` too);
        the tasks running here stop (`stopped`, their final status written), the queued ones
        stay `queued` in the database for the node that takes over (the session actors are
        stopped, which drops their queues from memory only; a `StopAll` would stop the queued
        tasks too)."""
        runtime, store = self.runtime, self.runtime.store
        self.nodes.closing = True  # (no new takeover starts here: see `taking`'s users)
        if self.takeovers_under_way:
            self.waiting_for_takeovers = True
            await self._no_takeover.wait()
            self.waiting_for_takeovers = False
        for task in self._tasks:  # (between its rounds; the lease is kept)
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
        directory it may take), until none is left placed here. What none of them takes stays
        here, its queue kept, for this node's next start (or a takeover by a node that sees
        it); this node leaves the set of nodes only if nothing is left, counted last."""
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
        left = len(await store.sessions_on(self.node_id))  # (anything placed here meanwhile)
        if not left:
            await client.srem(NODES, self.node_id)  # (nothing to watch here any more)
        log.info("node_handed_over", node=self.node_id, taken_by=taken_by, left=left)

    async def take_over_now(self, node: str) -> int:
        """`node` let its lease go on a graceful shutdown and asks this node to take it over
        now, as after a lease expiry (after any takeover of it already under way); returns
        how many of its sessions stay placed on it. `Conflict` if it holds its lease;
        `Unavailable` if this node is shutting down."""
        if self.nodes.closing:
            raise Unavailable(f"node {self.node_id} is shutting down; try again")
        if node == self.node_id:
            raise Conflict(f"node {node} holds its lease: it is not taken over")
        async with self.taking():  # (counted before anything is awaited: see `stop_here`)
            client, millis = self.nodes.bus.client, int(TAKEOVER_LEASES * self.seconds * 1000)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TAKEOVER_WAIT
            while (
                taken := await take_takeover(client, node, self.node_id, millis, grace=False)
            ) != 1:
                if taken == -1:
                    raise Conflict(f"node {node} holds its lease: it is not taken over")
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
