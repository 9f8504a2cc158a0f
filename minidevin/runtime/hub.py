"""Fan-out of committed events to live subscribers, on the runtime's event loop.

The store calls `publish` after each commit, so a subscriber only ever sees
events that are on disk. Each subscriber has a bounded queue: one that does not
keep up is cut off (`SlowSubscriber`) instead of slowing the task or others,
and can resume from the last `seq` it saw.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from minidevin.runtime.events import Event


class SlowSubscriber(Exception):
    """The subscriber's queue overflowed; resume with `after=<last seq seen>`."""


_OVERFLOW = object()


class Subscription:
    def __init__(self, task_id: str, maxsize: int) -> None:
        self.task_id = task_id
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._maxsize = maxsize
        self.overflowed = False

    def offer(self, events: list[Event]) -> None:
        """Queue one committed batch; cut off a subscriber already `maxsize` events behind.

        The check is per batch, so a reader that keeps up is never cut off
        just because one commit carried many events.
        """
        if self.overflowed:
            return
        if self._queue.qsize() >= self._maxsize:
            self.overflowed = True
            self._queue = asyncio.Queue()  # drop the backlog: it resumes from the store
            self._queue.put_nowait(_OVERFLOW)
            return
        for event in events:
            self._queue.put_nowait(event)

    async def get(self) -> Event:
        item = await self._queue.get()
        if item is _OVERFLOW:
            raise SlowSubscriber(f"subscriber fell more than {self._maxsize} events behind")
        assert isinstance(item, Event)
        return item


class EventHub:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)

    def subscribe(self, task_id: str) -> Subscription:
        subscription = Subscription(task_id, self.queue_size)
        self._subscribers[task_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.task_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.task_id]

    def publish(self, events: list[Event]) -> None:
        by_task: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            if event.task_id in self._subscribers:
                by_task[event.task_id].append(event)
        for task_id, task_events in by_task.items():
            for subscription in self._subscribers[task_id]:
                subscription.offer(task_events)

    def subscriber_count(self, task_id: str | None = None) -> int:
        if task_id is not None:
            return len(self._subscribers.get(task_id, ()))
        return sum(len(s) for s in self._subscribers.values())
