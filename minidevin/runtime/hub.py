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
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize + 1)
        self._maxsize = maxsize
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if self._queue.qsize() >= self._maxsize:
            self.overflowed = True
            self._queue.put_nowait(_OVERFLOW)
            return
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
        for event in events:
            for subscription in self._subscribers.get(event.task_id, ()):
                subscription.offer(event)

    def subscriber_count(self, task_id: str | None = None) -> int:
        if task_id is not None:
            return len(self._subscribers.get(task_id, ()))
        return sum(len(s) for s in self._subscribers.values())
