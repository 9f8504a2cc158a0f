"""History pages as WebSocket messages: the store builds each event's message from the
stored JSON text (`Store.events_wire_page`), and it says what `Event.wire` says.

Same keys in the same order (`type` first), same values; only whitespace may
differ. An event whose message is over 1 MiB is cut exactly as a live one.
"""

from __future__ import annotations

import json
from typing import Any

from store_backends import Backend, backend  # noqa: F401 (the fixture)
from test_store import opened, seed_task

from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.wire import MAX_MESSAGE_BYTES


def logged(task_id: str) -> list[Event]:
    now = utc_now()
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("status", {"status": "running", "message": None}),
        ("token", {"content": 'quotes " and \\ and \n, caf\u00e9 \u2603 \U0001f600'}),
        ("turn_restart", {}),
        ("tool_call", {"tool": "edit", "input": {"path": "a.py", "lines": [1, 2.5, True]}}),
        ("model_turn", {"text": "x" * (MAX_MESSAGE_BYTES + 10), "tool_calls": []}),
        ("status", {"status": "failed"}),  # (a resume goes on past it)
        ("status", {"status": "completed", "message": "done"}),
    ]
    return [Event(task_id, seq, kind, data, now) for seq, (kind, data) in enumerate(bodies, 1)]


async def test_history_pages_as_messages_say_what_the_live_messages_say(
    backend: Backend,  # noqa: F811
) -> None:
    store = await opened(backend)
    try:
        await seed_task(store, "t1")
        events = logged("t1")
        for event in events:
            store.append(event)
        await store.flush()

        page = await store.events_wire_page("t1", 0, 100)
        assert [seq for seq, _, _ in page] == [event.seq for event in events]
        assert [final for _, final, _ in page] == [event.is_final for event in events]
        for (_, _, text), event in zip(page, events, strict=True):
            live = json.loads(event.wire())
            message = json.loads(text)
            assert list(message) == list(live)  # same keys, same order (type first)
            assert message == live
            assert len(text.encode()) <= MAX_MESSAGE_BYTES
        assert json.loads(page[4][2])["cut"] is True  # the long turn: cut as a live one

        # keyset pages: at most `limit`, after `after`
        assert [seq for seq, _, _ in await store.events_wire_page("t1", 2, 2)] == [3, 4]
        assert await store.events_wire_page("t1", 7, 10) == []
        assert await store.events_wire_page("other", 0, 10) == []
    finally:
        await store.close()
