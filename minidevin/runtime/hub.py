"""Fan-out of committed events to live subscribers, on the runtime's event loop.

The store calls `publish` after each commit, so a subscriber only ever sees
events that are on disk. Each subscriber has a bounded queue: one that does not
keep up is cut off (`SlowSubscriber`) instead of slowing the task or others,
and can resume from the last `seq` it saw.

Cost per subscriber is kept to appending the batch to its queue and waking
it: the events are the same objects for every subscriber, so their JSON text
(`Event.wire`) is computed once, not once per subscriber.

`interrupt` tells subscribers the store is unavailable (`StoreUnavailable` on
their next `get`, their backlog dropped): they resume with `after=` later.

With nodes (`runtime/bus.py`), `watcher` is the node bus: a stream `attach`es its
subscription (the bus subscribes to the task's channel on other nodes and
waits until Redis confirms) before it reads the history, and `resync` makes
the subscribers of the given tasks re-read the log (`Resync` on their next
`get`), after Redis lost what it carried.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Iterable
from typing import Protocol

from minidevin.runtime import metrics
from minidevin.runtime.events import Event


class SlowSubscriber(Exception):
    """The subscriber's queue overflowed; resume with `after=<last seq seen>`."""


class StoreUnavailable(Exception):
    """The store cannot commit for now; resume with `after=<last seq seen>` later."""


SILENCE = 5.0  # seconds


class Resync(Exception):
    """Live events may have been lost on the way from another node: read the log again
    after the last `seq` seen, then go on live."""


class Watcher(Protocol):
    """What brings other nodes' events of a task to this hub (`runtime/bus.NodeBus`)."""

    def watch(self, task_id: str) -> Awaitable[None]: ...
    def unwatch(self, task_id: str) -> None: ...


class Subscription:
    def __init__(self, task_id: str, maxsize: int) -> None:
        self.task_id = task_id
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._failure: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.watched = False  # (attached to the node bus: unwatched when it goes)
        self._resync = False

    def resync(self) -> None:
        """`Resync` on the next `get` (what is queued is dropped: the log has it)."""
        if self._failure is None:
            self._resync = True
            self._queue.clear()
            self._wake()

    def offer(self, events: list[Event]) -> None:
        """Queue one committed batch; cut off a subscriber already `maxsize` events behind.

        The check is per batch, so a reader that keeps up is never cut off
        just because one commit carried many events.
        """
        if self._failure is not None:
            return
        if len(self._queue) >= self._maxsize:
            self.overflowed = True
            self.fail(SlowSubscriber(f"subscriber fell more than {self._maxsize} events behind"))
            return
        self._queue.extend(events)
        self._wake()

    def fail(self, error: Exception) -> None:
        """End the subscription with `error` on the next `get` (the backlog is dropped:
        the subscriber resumes from the store)."""
        if self._failure is None:
            self._failure = error
            self._queue.clear()
            self._wake()

    async def get(self, silence: float | None = None) -> Event:
        """The next event; `Resync` after `silence` seconds without one (with nodes: an
        event another node published may have been lost on the way)."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._resync:
                self._resync = False
                raise Resync()
            if self._queue:
                return self._queue.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, silence)
            except TimeoutError:
                raise Resync() from None
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class EventHub:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        # why the store cannot commit, while it has been down past its retry window
        self.store_down: str | None = None
        self._store_up = asyncio.Event()
        self._store_up.set()
        self.watcher: Watcher | None = None  # the node bus, with nodes

    @property
    def silence(self) -> float | None:
        """How long a live stream waits before it checks the log (only with nodes)."""
        return None if self.watcher is None else SILENCE

    def mark_store_down(self, detail: str) -> None:
        """The store has been down past its retry window: every subscriber is told now,
        and a new one after its history."""
        self.store_down = detail
        self._store_up.clear()
        self.interrupt(None, detail)

    def mark_store_back(self) -> None:
        self.store_down = None
        self._store_up.set()

    async def store_back(self) -> None:
        """Wait until the store commits again (at once if it does)."""
        await self._store_up.wait()

    def subscribe(self, task_id: str) -> Subscription:
        subscription = Subscription(task_id, self.queue_size)
        if self.store_down is not None:  # nothing new can come: told after the history
            subscription.fail(StoreUnavailable(self.store_down))
        self._subscribers[task_id].add(subscription)
        return subscription

    async def attach(self, subscription: Subscription) -> None:
        """With nodes: from now on, other nodes' events of its task come to it too."""
        if self.watcher is not None and not subscription.watched:
            subscription.watched = True
            await self.watcher.watch(subscription.task_id)

    def resync(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            for subscription in self._subscribers.get(task_id, ()):
                subscription.resync()

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.watched and self.watcher is not None:
            subscription.watched = False
            self.watcher.unwatch(subscription.task_id)
        subscribers = self._subscribers.get(subscription.task_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.task_id]

    def publish(self, events: list[Event]) -> None:
        metrics.count_published(events)  # (committed: each event passes here once)
        by_task: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            if event.task_id in self._subscribers:
                by_task[event.task_id].append(event)
        for task_id, task_events in by_task.items():
            for subscription in self._subscribers[task_id]:
                subscription.offer(task_events)

    def interrupt(self, task_ids: Iterable[str] | None, detail: str) -> int:
        """Every current subscriber of `task_ids` (None: of every task) gets
        `StoreUnavailable(detail)` on its next `get`; returns how many were told."""
        chosen = list(self._subscribers) if task_ids is None else list(task_ids)
        told = 0
        for task_id in chosen:
            for subscription in self._subscribers.get(task_id, ()):
                subscription.fail(StoreUnavailable(detail))
                told += 1
        return told

    def subscriber_count(self, task_id: str | None = None) -> int:
        if task_id is not None:
            return len(self._subscribers.get(task_id, ()))
        return sum(len(s) for s in self._subscribers.values())
