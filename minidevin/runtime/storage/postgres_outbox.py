"""The webhook outbox, retention, approvals and wire pages in PostgreSQL: parts of
`PostgresStore` (the same rows and answers as `sqlite_webhooks.py`,
`sqlite_retention.py`, `sqlite_approvals.py` and `sqlite_wire.py`).

The outbox rows are enqueued in the status event's transaction
(`postgres_batch.enqueue_status`); the deliverer reads only the head of each
task's line. A wire page is spliced by the server from the stored JSON text,
so the loop gets one string per event and decodes none.
"""

from __future__ import annotations

import json
from typing import Any

from minidevin.runtime.events import FINAL_STATUSES
from minidevin.runtime.storage.postgres_engine import PostgresEngine
from minidevin.runtime.wire import MAX_MESSAGE_BYTES, dumps

_PENDING = "{d}.delivered_at IS NULL AND {d}.attempts < $1"
# the first pending delivery of its task (of a session that still exists)
_HEAD = (
    "FROM webhook_deliveries d JOIN sessions s ON s.id = d.session_id "
    f"WHERE {_PENDING.format(d='d')} AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e "
    f"WHERE e.task_id = d.task_id AND e.seq < d.seq AND {_PENDING.format(d='e')}) "
)
FINAL = ["completed", "failed", "stopped"]
# a final task that ended before $2 (one with no end: created before it)
_EXPIRED = "status = ANY($1::text[]) AND COALESCE(completed_at, created_at) < $2"
_WIRE_PAGE = (
    "SELECT seq, '{\"type\":' || to_json(type)::text || "
    "CASE WHEN data IS NULL OR data = '{}' THEN '' "
    "ELSE ',' || substr(data, 2, length(data) - 2) END || "
    "',\"timestamp\":' || to_json(timestamp)::text || ',\"seq\":' || seq || "
    "',\"task_id\":' || to_json(task_id)::text || '}' AS wire, "
    "CASE WHEN type = 'status' THEN data::json ->> 'status' END AS status "
    "FROM events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
# text this long may be over the limit in the live form (its `", "` and `": "`): it is
# decoded and sent through `wire.dumps`, which cuts exactly as for a live event
_LONG = MAX_MESSAGE_BYTES // 2


class PostgresOutbox(PostgresEngine):
    # -- the webhook outbox ----------------------------------------------------------

    async def due_webhooks(self, now: float, max_attempts: int, limit: int) -> list[dict[str, Any]]:
        """Due deliveries, each the head of its task's line, oldest first."""
        return await self.fetch_all(
            "SELECT d.id, d.task_id, d.seq, d.url, d.body, d.attempts, "
            f"s.webhook_secret AS secret {_HEAD}AND d.next_attempt_at <= $2 "
            "ORDER BY d.next_attempt_at, d.rowid LIMIT $3",
            max_attempts, now, limit,
        )  # fmt: skip

    async def next_webhook_due(self, max_attempts: int, after: float = 0.0) -> float | None:
        row = await self.fetch_one(
            f"SELECT min(d.next_attempt_at) AS due {_HEAD}AND d.next_attempt_at > $2",
            max_attempts, after,
        )  # fmt: skip
        return None if row is None else row["due"]

    async def webhook_delivered(self, delivery_id: str, at: str, attempts: int) -> None:
        await self.write(
            "UPDATE webhook_deliveries SET delivered_at = $1, attempts = $2, last_error = NULL "
            "WHERE id = $3",
            at, attempts, delivery_id,
        )  # fmt: skip

    async def webhook_failed(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        await self.write(
            "UPDATE webhook_deliveries SET attempts = $1, next_attempt_at = $2, last_error = $3 "
            "WHERE id = $4",
            attempts, next_attempt_at, error[:1000], delivery_id,
        )  # fmt: skip

    async def forget_webhooks(self, before: float, max_attempts: int) -> None:
        await self.write(
            "DELETE FROM webhook_deliveries WHERE next_attempt_at < $1 "
            "AND (delivered_at IS NOT NULL OR attempts >= $2)",
            before, max_attempts,
        )  # fmt: skip

    # -- retention ---------------------------------------------------------------------

    async def forget_responses(self, before: float) -> None:
        await self.write("DELETE FROM idempotency_keys WHERE created_at < $1", before)

    async def expired_tasks(self, before: str, limit: int) -> list[dict[str, Any]]:
        return await self.fetch_all(
            f"SELECT id, session_id FROM tasks WHERE {_EXPIRED} ORDER BY rowid LIMIT $3",
            FINAL, before, limit,
        )  # fmt: skip

    async def task_expired(self, task_id: str, before: str) -> bool:
        return bool(
            await self.fetch_one(
                f"SELECT 1 FROM tasks WHERE {_EXPIRED} AND id = $3", FINAL, before, task_id
            )
        )

    async def delete_events_batch(self, task_id: str, limit: int) -> int:
        row = await self.fetch_one(
            "SELECT count(*) AS n, max(seq) AS last FROM "
            "(SELECT seq FROM events WHERE task_id = $1 ORDER BY seq LIMIT $2) AS oldest",
            task_id, limit,
        )  # fmt: skip
        if row is None or not row["n"]:
            return 0
        await self.write(
            "DELETE FROM events WHERE task_id = $1 AND seq <= $2", task_id, row["last"]
        )
        return int(row["n"])

    async def delete_expired_task(self, task_id: str, before: str) -> list[str] | None:
        if not await self.task_expired(task_id, before):
            return None
        artifacts = await self.fetch_all("SELECT id FROM artifacts WHERE task_id = $1", task_id)
        await self.write(f"DELETE FROM tasks WHERE {_EXPIRED} AND id = $3", FINAL, before, task_id)
        return [row["id"] for row in artifacts]

    # -- approvals and wire pages ------------------------------------------------------

    async def approval_state(self, task_id: str, call_id: str) -> str | None:
        """None if the task's log never asked for `call_id`'s approval; else "pending",
        "approve" or "reject"."""
        rows = await self.fetch_all(
            "SELECT type, data FROM events WHERE task_id = $1 "
            "AND type IN ('approval_request', 'approval_decision') ORDER BY seq",
            task_id,
        )
        asked = False
        decided: list[Any] = []
        for row in rows:
            data = json.loads(row["data"])
            if not isinstance(data, dict) or data.get("call_id") != call_id:
                continue
            if row["type"] == "approval_decision":
                decided.append(data.get("decision"))
            asked = True
        if not asked:
            return None
        return decided[-1] if decided else "pending"

    async def events_wire_page(
        self, task_id: str, after: int, limit: int
    ) -> list[tuple[int, bool, str]]:
        """(seq, is final, message text) of at most `limit` events after `after`, in order."""
        rows = await self.fetch_all(_WIRE_PAGE, task_id, after, limit)
        return [
            (
                row["seq"],
                row["status"] in FINAL_STATUSES,
                row["wire"] if len(row["wire"]) <= _LONG else dumps(json.loads(row["wire"])),
            )
            for row in rows
        ]
