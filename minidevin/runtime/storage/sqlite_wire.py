"""A history page as WebSocket messages, without decoding and encoding JSON again.

A replay sends each stored event as its WebSocket message: the event's fields
plus `type`, `timestamp`, `seq` and `task_id`, `type` first (as
`Event.to_message`). The `data` column already holds the fields as JSON text,
so SQLite splices the message from it on the reader connection's thread (the
GIL released while it steps): the event loop gets one string per event,
allocates no dict, and the garbage collector has nothing to track. The text is
compact where a live message has `", "` and `": "` (whitespace only). A long
one (that could be over `wire.MAX_MESSAGE_BYTES` in the live form) goes through
`wire.dumps`, so it is cut exactly as a live one.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import aiosqlite

from minidevin.runtime.events import FINAL_STATUSES
from minidevin.runtime.storage.interface import StoreError
from minidevin.runtime.wire import MAX_MESSAGE_BYTES, dumps

_PAGE = (
    "SELECT seq, '{\"type\":' || json_quote(type) || "
    "CASE WHEN data IS NULL OR data = '{}' THEN '' "
    "ELSE ',' || substr(data, 2, length(data) - 2) END || "
    "',\"timestamp\":' || json_quote(timestamp) || ',\"seq\":' || seq || "
    "',\"task_id\":' || json_quote(task_id) || '}', "
    "CASE WHEN type = 'status' THEN json_extract(data, '$.status') END "
    "FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# text this long may be over the limit in the live form (its `", "` and `": "`): it is
# decoded and sent through `wire.dumps`, which cuts exactly as for a live event
_LONG = MAX_MESSAGE_BYTES // 2


def _rows(conn: sqlite3.Connection, params: tuple[str, int, int]) -> list[tuple[int, str, Any]]:
    """On the reader connection's thread: the page's rows as plain tuples."""
    cursor = conn.cursor()
    cursor.row_factory = None
    try:
        return cursor.execute(_PAGE, params).fetchall()
    finally:
        cursor.close()


async def wire_page(
    reader: aiosqlite.Connection, task_id: str, after: int, limit: int
) -> list[tuple[int, bool, str]]:
    """(seq, is final, message text) of at most `limit` events after `after`, in order."""
    try:  # (aiosqlite runs a callable on its connection's thread only through `_execute`)
        rows = await reader._execute(_rows, reader._conn, (task_id, after, limit))
    except sqlite3.OperationalError as exc:
        raise StoreError(f"read failed: {exc}") from exc
    return [
        (seq, status in FINAL_STATUSES, wire if len(wire) <= _LONG else dumps(json.loads(wire)))
        for seq, wire, status in rows
    ]
