"""The webhook outbox in SQLite: enqueued with the status event, read by the deliverer.

`enqueue_status` runs on the writer's thread inside `commit_batch`'s transaction, so
a task's delivery row is durable exactly when its `status` event is. The deliverer
(`runtime/webhooks.py`) reads due rows through `SqliteWebhooks`: only the head of
each task's line (its earliest delivery still pending), so one task's deliveries go
out strictly in `seq` order. A row that used up its attempts stays, with its last
error, and no longer holds its task's line.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import Any

from minidevin.runtime.events import FINAL_STATUSES, Event

_PENDING = "{d}.delivered_at IS NULL AND {d}.attempts < ?"
# the first pending delivery of its task (of a session that still exists)
_HEAD = (
    "FROM webhook_deliveries d JOIN sessions s ON s.id = d.session_id "
    f"WHERE {_PENDING.format(d='d')} AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e "
    f"WHERE e.task_id = d.task_id AND e.seq < d.seq AND {_PENDING.format(d='e')}) "
)


def enqueue_status(conn: sqlite3.Connection, event: Event) -> None:
    """On the writer's thread, in the batch's transaction, after `event` was inserted:
    the delivery of a `status` event, if the task's session has a webhook."""
    row = conn.execute(
        "SELECT s.id, s.webhook_url FROM tasks t JOIN sessions s ON s.id = t.session_id "
        "WHERE t.id = ? AND s.webhook_url IS NOT NULL",
        (event.task_id,),
    ).fetchone()
    if row is None:
        return
    session_id, url = row
    status = event.data["status"]
    delivery_id = str(uuid.uuid4())
    body = {
        "event": "task.status",
        "delivery_id": delivery_id,
        "task_id": event.task_id,
        "session_id": session_id,
        "status": status,
        "result": event.data.get("result"),
        "error": _last_error(conn, event.task_id) if status in FINAL_STATUSES else None,
        "timestamp": event.timestamp,
    }
    conn.execute(
        "INSERT OR IGNORE INTO webhook_deliveries (id, session_id, task_id, seq, url, body, "
        "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (delivery_id, session_id, event.task_id, event.seq, url,
         json.dumps(body, separators=(",", ":")), time.time()),
    )  # fmt: skip


def _last_error(conn: sqlite3.Connection, task_id: str) -> dict[str, str] | None:
    """The task's last `error` event since it was last resumed, as {code, message}."""
    row = conn.execute(
        "SELECT data FROM events WHERE task_id = ? AND type = 'error' AND seq > COALESCE("
        "(SELECT max(seq) FROM events WHERE task_id = ? AND type = 'resumed'), 0) "
        "ORDER BY seq DESC LIMIT 1",
        (task_id, task_id),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    data = json.loads(row[0])
    return {"code": data.get("code", ""), "message": data.get("error", "")}


class SqliteWebhooks:
    """The deliverer's reads and writes of the outbox (see `runtime/webhooks.py`): a mixin
    of `SqliteStore` over the engine's reads and writes (not a subclass of the engine,
    which imports `sqlite_batch`, which imports this module)."""

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError  # (the engine's, through `SqliteStore`)

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        raise NotImplementedError

    async def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    async def due_webhooks(self, now: float, max_attempts: int, limit: int) -> list[dict[str, Any]]:
        """Due deliveries, each the head of its task's line, oldest first."""
        return await self.fetch_all(
            "SELECT d.id, d.task_id, d.seq, d.url, d.body, d.attempts, "
            f"s.webhook_secret AS secret {_HEAD}AND d.next_attempt_at <= ? "
            "ORDER BY d.next_attempt_at, d.rowid LIMIT ?",
            (max_attempts, max_attempts, now, limit),
        )

    async def next_webhook_due(self, max_attempts: int, after: float = 0.0) -> float | None:
        """When the next head of a line is due after `after` (epoch seconds), None when
        nothing waits."""
        row = await self.fetch_one(
            f"SELECT min(d.next_attempt_at) AS due {_HEAD}AND d.next_attempt_at > ?",
            (max_attempts, max_attempts, after),
        )
        return None if row is None else row["due"]

    async def webhook_delivered(self, delivery_id: str, at: str, attempts: int) -> None:
        await self.write(
            "UPDATE webhook_deliveries SET delivered_at = ?, attempts = ?, last_error = NULL "
            "WHERE id = ?",
            (at, attempts, delivery_id),
        )

    async def webhook_failed(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        await self.write(
            "UPDATE webhook_deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? "
            "WHERE id = ?",
            (attempts, next_attempt_at, error[:1000], delivery_id),
        )

    async def forget_webhooks(self, before: float, max_attempts: int) -> None:
        """Delete the deliveries settled (delivered, or given up) before `before` (epoch)."""
        await self.write(
            "DELETE FROM webhook_deliveries WHERE next_attempt_at < ? "
            "AND (delivered_at IS NOT NULL OR attempts >= ?)",
            (before, max_attempts),
        )
