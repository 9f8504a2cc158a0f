"""A task's stream: its history after `after`, then its live events, to its end.

The subscription is opened before the history is read, so nothing committed in
between is missed, and what arrives live at or below the last `seq` seen is
dropped: no gap and no duplicate at the switch. A final `status` ends the
stream when nothing follows it: a resumed task's log goes on past the final
status of its earlier run, and a new subscriber reads straight through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from minidevin.runtime.events import Event
from minidevin.runtime.hub import EventHub
from minidevin.runtime.storage import Store


async def history_then_live(
    store: Store, hub: EventHub, task_id: str, after: int = 0
) -> AsyncIterator[Event]:
    subscription = hub.subscribe(task_id)
    try:
        last = after
        history = await store.events_after(task_id, after)
        for event in history:
            yield event
            last = event.seq
        if history and history[-1].is_final:
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
