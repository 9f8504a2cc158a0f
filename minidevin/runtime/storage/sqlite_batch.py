"""One committed batch: its statements and events, and each event's task-row projection.

Runs on the writer connection's thread (`SqliteEngine._commit`), in one
transaction; only the storage package uses it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from minidevin.runtime.events import Event
from minidevin.runtime.projection import KEEP_FIRST, task_columns
from minidevin.runtime.storage.sqlite_webhooks import enqueue_status

INSERT_ROWS = 200  # events a statement (5 parameters each; SQLite allows 32,766)
JSON_COLUMNS = frozenset({"plan", "result", "usage"})


@dataclass(frozen=True)
class Write:
    """One statement for the writer; `done` (optional) learns when it committed."""

    sql: str
    params: Sequence[Any] = ()
    done: asyncio.Future[None] | None = field(default=None, compare=False)


def encode_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def commit_batch(conn: sqlite3.Connection, batch: list[Write | Event]) -> bool:
    """On the writer's thread: the batch's statements and events, each event's projection
    applied after it (`runtime/projection.py`), one transaction. True if a row changed."""
    if conn.in_transaction:  # (a ROLLBACK that failed with the storage left one open)
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    projected = False
    try:
        events: list[tuple[str, int, str, str | None, str]] = []
        for item in batch:
            if isinstance(item, Event):
                events.append(
                    (item.task_id, item.seq, item.type, encode_json(item.data), item.timestamp)
                )
                columns = task_columns(item)
                if columns is not None:  # the row follows its log, in the same commit
                    _insert_events(conn, events)
                    events = []
                    conn.execute(*_projection(item.task_id, columns))
                    projected = True
                    if item.type == "status":  # its webhook delivery, in the same commit
                        enqueue_status(conn, item)
                continue
            _insert_events(conn, events)
            events = []
            conn.execute(item.sql, item.params)
        _insert_events(conn, events)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return projected


def _insert_events(
    conn: sqlite3.Connection, rows: list[tuple[str, int, str, str | None, str]]
) -> None:
    """Insert events, up to `INSERT_ROWS` a statement (`executemany` takes and gives back
    the GIL once a row, and waits for it each time on a busy server)."""
    for start in range(0, len(rows), INSERT_ROWS):
        chunk = rows[start : start + INSERT_ROWS]
        conn.execute(
            "INSERT OR IGNORE INTO events (task_id, seq, type, data, timestamp) VALUES "
            + ",".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
            [value for row in chunk for value in row],
        )


def _projection(task_id: str, columns: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE that applies an event's projection to its task's row."""
    assignments, values = [], []
    for name, value in columns.items():
        if isinstance(value, tuple) and value[0] is KEEP_FIRST:
            assignments.append(f"{name} = COALESCE({name}, ?)")
            value = value[1]
        else:
            assignments.append(f"{name} = ?")
        values.append(encode_json(value) if name in JSON_COLUMNS else value)
    return f"UPDATE tasks SET {', '.join(assignments)} WHERE id = ?", (*values, task_id)


def first_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None
