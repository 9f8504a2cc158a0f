"""A task's stream: its history after `after`, then its live events, to its end.

The history is read in pages (`HISTORY_PAGE` events, keyset on `seq`): each
page is sent before the next is read, so a late subscriber to a long task gets
its first event after one small read and the server holds one page per
subscriber, never the whole log.

The subscription is opened before the first page is read, so nothing committed
in between (or between two pages) is missed, and what arrives live at or below
the last `seq` seen is dropped: no gap and no duplicate at the switch. A final
`status` ends the stream when nothing follows it (checked after the last page):
a resumed task's log goes on past the final status of its earlier run, and a
new subscriber reads straight through it.

Two forms: `history_then_live` yields `Event`s (their `data` decoded), for the
API; `wire_history_then_live` yields each event's WebSocket message, its
history built by the store from the stored JSON text (`Store.events_wire_page`)
with nothing decoded on the event loop, its live events as `Event.wire`.

The loop stays free for others: all history streams together send for at most
`HISTORY_SLICE` before the loop runs its other callbacks (each takes its share,
then yields), so a request waits a few milliseconds a loop turn, not 10 streams'
worth of sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from minidevin.runtime.events import Event
from minidevin.runtime.hub import EventHub, Resync
from minidevin.runtime.storage import Store

HISTORY_PAGE = 500  # events per history read: one page of rows in memory per subscriber
HISTORY_SLICE = 0.002  # seconds of sending history (all streams together) a loop turn
_MIN_SHARE = 0.0002  # (the share of one stream, however many there are)

T = TypeVar("T")
PageReader = Callable[[str, int, int], Awaitable[list[tuple[int, bool, T]]]]


class _Sending:
    """How many history streams are sending now: each one's share of the slice."""

    count = 0


def history_then_live(
    store: Store, hub: EventHub, task_id: str, after: int = 0, page_size: int = HISTORY_PAGE
) -> AsyncGenerator[Event, None]:
    """The task's events after `after`, history then live, to its final status."""

    async def read(task_id: str, after: int, limit: int) -> list[tuple[int, bool, Event]]:
        page = await store.events_page(task_id, after, limit)
        return [(event.seq, event.is_final, event) for event in page]

    return _replay(store, read, lambda event: event, hub, task_id, after, page_size)


def wire_history_then_live(
    store: Store, hub: EventHub, task_id: str, after: int = 0, page_size: int = HISTORY_PAGE
) -> AsyncGenerator[str, None]:
    """`history_then_live` as WebSocket messages (JSON text, at most 1 MiB each)."""
    return _replay(store, store.events_wire_page, Event.wire, hub, task_id, after, page_size)


async def _replay(
    store: Store,
    read: PageReader[T],
    live: Callable[[Event], T],
    hub: EventHub,
    task_id: str,
    after: int,
    page_size: int,
) -> AsyncGenerator[T, None]:
    subscription = hub.subscribe(task_id)
    clock = asyncio.get_running_loop().time
    try:
        await hub.attach(subscription)  # (other nodes' events from now on: before the history)
        last, ended = after, False
        while True:
            _Sending.count += 1
            try:
                while True:
                    page = await read(task_id, last, page_size)
                    sliced = clock()
                    for seq, final, item in page:
                        yield item
                        last, ended = seq, final
                        # a send that needs no drain never yields: without this, a page
                        # holds the loop (and 10 streams hold it 10 times as long)
                        if clock() - sliced > max(HISTORY_SLICE / _Sending.count, _MIN_SHARE):
                            await asyncio.sleep(0)
                            sliced = clock()
                    if len(page) < page_size:
                        break  # the last page: what is committed after it arrives live
                    del page  # one page at a time
            finally:
                _Sending.count -= 1
            if ended:
                return  # ended (a resume would append after it; the client may come back)
            newest = await store.last_event(task_id)
            if newest is not None and newest.is_final and newest.seq <= last:
                return  # the client already saw the end (`after` at or past it)
            try:
                while True:
                    event = await subscription.get(hub.silence)
                    if event.seq <= last:
                        continue
                    if event.seq > last + 1:
                        raise Resync()  # (a gap: some were lost on the way from a node)
                    yield live(event)
                    last = event.seq
                    if event.is_final:
                        return
            except Resync:
                continue  # the log from `last`, then live again
    finally:
        hub.unsubscribe(subscription)
