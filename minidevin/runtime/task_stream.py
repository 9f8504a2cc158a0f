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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from minidevin.runtime.events import Event
from minidevin.runtime.hub import EventHub
from minidevin.runtime.storage import Store

HISTORY_PAGE = 500  # events per history read: one page of rows in memory per subscriber
HISTORY_SLICE = 0.002  # seconds of sending history before the loop is let to run others


async def history_then_live(
    store: Store, hub: EventHub, task_id: str, after: int = 0, page_size: int = HISTORY_PAGE
) -> AsyncIterator[Event]:
    subscription = hub.subscribe(task_id)
    clock = asyncio.get_running_loop().time
    try:
        last, ended = after, False
        while True:
            page = await store.events_page(task_id, last, page_size)
            sliced = clock()
            for event in page:
                yield event
                last, ended = event.seq, event.is_final
                if clock() - sliced > HISTORY_SLICE:  # a send that needs no drain never
                    await asyncio.sleep(0)  # yields: without this, a page holds the loop
                    sliced = clock()
            if len(page) < page_size:
                break  # the last page: what is committed after it arrives live
            del page  # one page at a time
        if ended:
            return  # ended (a resume would append after it; the client may come back)
        newest = await store.last_event(task_id)
        if newest is not None and newest.is_final and newest.seq <= last:
            return  # the client already saw the end (`after` at or past it)
        while True:
            event = await subscription.get()
            if event.seq <= last:
                continue
            yield event
            last = event.seq
            if event.is_final:
                return
    finally:
        hub.unsubscribe(subscription)
