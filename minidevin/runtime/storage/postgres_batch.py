"""One committed batch on PostgreSQL: its statements and events, each event's task-row
projection, and the webhook delivery of each status event, in one transaction.

Runs on the writer connection (`PostgresEngine._commit`); only the storage
package uses it. A run of events goes in one statement (`unnest` of arrays:
one round trip however many), skipping ones already stored (`ON CONFLICT DO
NOTHING`, SQLite's `INSERT OR IGNORE`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from minidevin.runtime.events import FINAL_STATUSES, Event
from minidevin.runtime.projection import KEEP_FIRST, task_columns
from minidevin.runtime.storage.postgres_text import store_params

JSON_COLUMNS = frozenset({"plan", "result", "usage"})
_INSERT_EVENTS = (
    "INSERT INTO events (task_id, seq, type, data, timestamp) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]) "
    "ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True)
class Write:
    """One statement for the writer (`$1`... parameters); `done` (optional) learns when it
    committed."""

    sql: str
    params: Sequence[Any] = ()
    done: asyncio.Future[None] | None = field(default=None, compare=False)


def encode_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Fenced(Exception):
    """This node's generation is no longer the database's: another node took it over, and
    nothing more of this process may be committed."""


async def commit_batch(
    conn: asyncpg.Connection, batch: list[Write | Event], fence: tuple[str, int] | None = None
) -> bool:
    """The batch's statements and events in order, each event's projection applied after
    it (`runtime/projection.py`), one transaction. True if a task row changed.

    With `fence` (node id, generation), the transaction first reads the node's generation
    under a share lock and raises `Fenced` if it moved on: a takeover's increment waits for
    a batch in flight, and no batch commits after it."""
    projected = False
    async with conn.transaction():
        if fence is not None:
            node, generation = fence
            now = await conn.fetchval(
                "SELECT generation FROM node_generations WHERE node = $1 FOR SHARE", node
            )
            if now != generation:
                raise Fenced(
                    f"node {node} was taken over (generation {generation}, now {now}): "
                    "its writes are refused"
                )
        events: list[Event] = []
        for item in batch:
            if isinstance(item, Event):
                events.append(item)
                columns = task_columns(item)
                if columns is not None:  # the row follows its log, in the same commit
                    await _insert_events(conn, events)
                    events = []
                    sql, *values = _projection(item.task_id, columns)
                    await conn.execute(sql, *store_params(values))
                    projected = True
                    if item.type == "status":  # its webhook delivery, in the same commit
                        await enqueue_status(conn, item)
                continue
            await _insert_events(conn, events)
            events = []
            await conn.execute(item.sql, *store_params(item.params))
        await _insert_events(conn, events)
    return projected


async def _insert_events(conn: asyncpg.Connection, events: list[Event]) -> None:
    if not events:
        return
    await conn.execute(
        _INSERT_EVENTS,
        [event.task_id for event in events],
        [event.seq for event in events],
        [event.type for event in events],
        [encode_json(event.data) for event in events],
        [event.timestamp for event in events],
    )


def _projection(task_id: str, columns: dict[str, Any]) -> tuple[Any, ...]:
    """The UPDATE that applies an event's projection to its task's row, and its values."""
    assignments, values = [], []
    for name, value in columns.items():
        mark = f"${len(values) + 1}"
        if isinstance(value, tuple) and value[0] is KEEP_FIRST:
            assignments.append(f"{name} = COALESCE({name}, {mark})")
            value = value[1]
        else:
            assignments.append(f"{name} = {mark}")
        values.append(encode_json(value) if name in JSON_COLUMNS else value)
    sql = f"UPDATE tasks SET {', '.join(assignments)} WHERE id = ${len(values) + 1}"
    return (sql, *values, task_id)


async def enqueue_status(conn: asyncpg.Connection, event: Event) -> None:
    """In the batch's transaction, after `event` was inserted: the delivery of a `status`
    event, if the task's session has a webhook (see `sqlite_webhooks.py`: the same rows)."""
    row = await conn.fetchrow(
        "SELECT s.id, s.webhook_url FROM tasks t JOIN sessions s ON s.id = t.session_id "
        "WHERE t.id = $1 AND s.webhook_url IS NOT NULL",
        event.task_id,
    )
    if row is None:
        return
    session_id, url = row["id"], row["webhook_url"]
    status = event.data["status"]
    delivery_id = str(uuid.uuid4())
    body = {
        "event": "task.status",
        "delivery_id": delivery_id,
        "task_id": event.task_id,
        "session_id": session_id,
        "status": status,
        "result": event.data.get("result"),
        "error": await _last_error(conn, event.task_id) if status in FINAL_STATUSES else None,
        "timestamp": event.timestamp,
    }
    await conn.execute(
        "INSERT INTO webhook_deliveries (id, session_id, task_id, seq, url, body, "
        "next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        delivery_id, session_id, event.task_id, event.seq, url,
        json.dumps(body, separators=(",", ":")), time.time(),
    )  # fmt: skip


async def _last_error(conn: asyncpg.Connection, task_id: str) -> dict[str, str] | None:
    """The task's last `error` event since it was last resumed, as {code, message}."""
    data = await conn.fetchval(
        "SELECT data FROM events WHERE task_id = $1 AND type = 'error' AND seq > COALESCE("
        "(SELECT max(seq) FROM events WHERE task_id = $1 AND type = 'resumed'), 0) "
        "ORDER BY seq DESC LIMIT 1",
        task_id,
    )
    if data is None:
        return None
    decoded = json.loads(data)
    return {"code": decoded.get("code", ""), "message": decoded.get("error", "")}


def first_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None
