"""`PostgresStore`: the storage interface's domain methods as PostgreSQL statements.

Selected by `MINIDEVIN_DATABASE_URL=postgresql://...`. The engine below it
(`postgres_engine.py`) batches the writes, keeps the read pool and the write
generation; the schema is `postgres_schema.py`. Rows come back as the SQLite
store gives them (same columns, JSON decoded the same way); `rowid` is an
identity column here, read only where the SQLite store reads its rowid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from minidevin.runtime import schemas
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.pagination import Page, page
from minidevin.runtime.storage.interface import new_id
from minidevin.runtime.storage.postgres_accounts import PostgresAccounts
from minidevin.runtime.storage.postgres_artifacts import PostgresArtifacts
from minidevin.runtime.storage.postgres_batch import Write, decode_json
from minidevin.runtime.storage.postgres_fencing import PostgresFencing
from minidevin.runtime.storage.postgres_outbox import PostgresOutbox
from minidevin.runtime.storage.rows import session_options

_TASK_JSON = ("plan", "result", "usage")
# every column but `rowid`, in the SQLite store's order (what its `SELECT *` gives)
TASK_COLUMNS = (
    "id, session_id, description, model, run_mode, max_iterations, status, created_at, "
    "started_at, completed_at, iterations, plan, result, usage, max_cost_usd, context, "
    "run_max_iterations, run_max_cost_usd, approval_policy"
)
SESSION_COLUMNS = (
    "id, user_id, name, status, working_directory, created_at, updated_at, secrets, "
    "webhook_url, webhook_secret, approval_policy, mcp_servers, mcp_config, node"
)
_EVENT_COLUMNS = "seq, type, data, timestamp"


def _task(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is not None:
        for name in _TASK_JSON:
            row[name] = decode_json(row[name])
    return row


def _event(task_id: str, row: dict[str, Any]) -> Event:
    return Event(task_id, row["seq"], row["type"], decode_json(row["data"]), row["timestamp"])


class PostgresStore(PostgresAccounts, PostgresArtifacts, PostgresOutbox, PostgresFencing):
    """The `Store` on a PostgreSQL database, migrated on open.

    `PostgresStore(url, retry_seconds=10.0, pool_size=10)`: `url` is a
    postgresql:// URL (it may hold a password: messages show host, port and
    database only); `retry_seconds` is the outage window (`StoreOutage`).
    """

    # -- sessions and working directories -----------------------------------------------

    async def insert_session(
        self, user_id: str, name: str, working_directory: str, **options: Any
    ) -> schemas.SessionCreated:
        now = utc_now()
        session = schemas.SessionCreated(
            id=new_id(), name=name, status="active", working_directory=working_directory,
            created_at=now,
        )  # fmt: skip
        row = session_options(options)
        marks = ", ".join(f"${n}" for n in range(1, 8 + len(row)))
        await self.write(
            "INSERT INTO sessions (id, user_id, name, status, working_directory, created_at, "
            f"updated_at, {', '.join(row)}) VALUES ({marks})",
            session.id, user_id, name, session.status, working_directory, now, now,
            *row.values(),
        )  # fmt: skip
        return session

    async def list_sessions(
        self, user_id: str, *, limit: int | None = None, after: tuple[str, int] | None = None
    ) -> Page[schemas.SessionSummary]:
        past = "AND (s.created_at, s.rowid) < ($3, $4) " if after else ""
        rows = await self.fetch_all(
            "SELECT s.rowid AS rowid, s.id, s.name, s.status, s.created_at, s.updated_at, "
            "(SELECT COUNT(*) FROM tasks t WHERE t.session_id = s.id) AS task_count "
            f"FROM sessions s WHERE s.user_id = $1 {past}"
            "ORDER BY s.created_at DESC, s.rowid DESC LIMIT $2",
            user_id, None if limit is None else limit + 1, *(after or ()),
        )  # fmt: skip
        return page("sessions", rows, limit, schemas.SessionSummary)

    async def session_row(self, session_id: str, user_id: str) -> dict[str, Any] | None:
        return await self.fetch_one(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND user_id = $2",
            session_id, user_id,
        )  # fmt: skip

    async def session_detail(self, session_id: str, user_id: str) -> schemas.SessionDetail | None:
        rows = await self.fetch_all(
            "SELECT s.id, s.name, s.status, s.working_directory, s.created_at, s.updated_at, "
            "s.approval_policy, s.mcp_servers, t.id AS task_id, t.description, "
            "t.status AS task_status FROM sessions s LEFT JOIN tasks t ON t.session_id = s.id "
            "WHERE s.id = $1 AND s.user_id = $2 "
            "ORDER BY t.created_at",
            session_id, user_id,
        )  # fmt: skip
        if not rows:
            return None
        first = rows[0]
        tasks = [
            schemas.TaskBrief(
                id=row["task_id"], description=row["description"], status=row["task_status"]
            )
            for row in rows
            if row["task_id"] is not None
        ]
        fields = ("id", "name", "status", "working_directory", "created_at", "updated_at")
        return schemas.SessionDetail(
            **{k: first[k] for k in fields},
            approval_policy=first["approval_policy"],
            mcp_servers=decode_json(first["mcp_servers"]),
            tasks=tasks,
        )

    def touch_session(self, session_id: str) -> None:
        self.submit(
            Write("UPDATE sessions SET updated_at = $1 WHERE id = $2", (utc_now(), session_id))
        )

    async def delete_session(self, session_id: str) -> list[str]:
        artifacts = await self.fetch_all(
            "SELECT a.id FROM artifacts a JOIN tasks t ON t.id = a.task_id WHERE t.session_id = $1",
            session_id,
        )
        await self.write("DELETE FROM sessions WHERE id = $1", session_id)
        return [row["id"] for row in artifacts]

    async def session_node(self, session_id: str) -> tuple[bool, str | None]:
        row = await self.fetch_one("SELECT node FROM sessions WHERE id = $1", session_id)
        return (False, None) if row is None else (True, row["node"])

    async def place_session(self, session_id: str, node: str, expected: str | None) -> str | None:
        await self.write(
            "UPDATE sessions SET node = $1 WHERE id = $2 AND node IS NOT DISTINCT FROM $3",
            node, session_id, expected,
        )  # fmt: skip
        return (await self.session_node(session_id))[1]

    async def sessions_on(self, node: str) -> list[dict[str, Any]]:
        return await self.fetch_all(
            "SELECT id, user_id, working_directory FROM sessions WHERE node = $1", node
        )

    async def workspace_claims_around(self, path: str) -> list[dict[str, Any]]:
        ancestors = [path, *(str(parent) for parent in PurePosixPath(path).parents)]
        # beneath `path`: every string from "path/" up to (not including) "path0" ("0"
        # follows "/"; the column compares byte by byte)
        return await self.fetch_all(
            "SELECT path, user_id FROM workspace_claims WHERE path = ANY($1::text[]) "
            "OR (path > $2 AND path < $3)",
            ancestors, path.rstrip("/") + "/", path.rstrip("/") + "0",
        )  # fmt: skip

    async def workspace_claim(self, path: str) -> dict[str, Any] | None:
        return await self.fetch_one(
            "SELECT path, user_id, st_dev, st_ino, st_uid, st_gid FROM workspace_claims "
            "WHERE path = $1",
            path,
        )

    async def put_workspace_claim(
        self, path: str, user_id: str, identity: tuple[int, int], owner: tuple[int, int]
    ) -> None:
        await self.write(
            "INSERT INTO workspace_claims (path, user_id, st_dev, st_ino, st_uid, st_gid, "
            "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (path) DO UPDATE SET "
            "st_dev = excluded.st_dev, st_ino = excluded.st_ino, st_uid = excluded.st_uid, "
            "st_gid = excluded.st_gid WHERE workspace_claims.user_id = excluded.user_id",
            path, user_id, str(identity[0]), str(identity[1]), str(owner[0]), str(owner[1]),
            utc_now(),
        )  # fmt: skip

    # -- tasks, events (artifacts: postgres_artifacts.py) ----------------------------------

    async def insert_task(
        self,
        task_id: str,
        session_id: str,
        request: schemas.TaskRequest,
        model: str,
        max_iterations: int,
        created_at: str,
        approval_policy: str = "never",
    ) -> None:
        await self.write(
            "INSERT INTO tasks (id, session_id, description, model, run_mode, max_iterations, "
            "max_cost_usd, context, status, created_at, run_max_iterations, run_max_cost_usd, "
            "approval_policy) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $11, "
            "$12)",
            task_id, session_id, request.description, model, request.run_mode, max_iterations,
            request.max_cost_usd, request.context, created_at, max_iterations,
            request.max_cost_usd, approval_policy,
        )  # fmt: skip

    async def task_row(self, task_id: str, user_id: str) -> dict[str, Any] | None:
        columns = ", ".join(f"t.{name.strip()}" for name in TASK_COLUMNS.split(","))
        row = await self.fetch_one(
            f"SELECT {columns} FROM tasks t JOIN sessions s ON s.id = t.session_id "
            "WHERE t.id = $1 AND s.user_id = $2",
            task_id, user_id,
        )  # fmt: skip
        return _task(row)

    async def task_owner(self, task_id: str) -> str | None:
        row = await self.fetch_one(
            "SELECT s.user_id FROM tasks t JOIN sessions s ON s.id = t.session_id WHERE t.id = $1",
            task_id,
        )
        return None if row is None else row["user_id"]

    async def list_tasks(
        self, session_id: str, *, limit: int | None = None, after: tuple[str, int] | None = None
    ) -> Page[schemas.TaskSummary]:
        past = "AND (created_at, rowid) > ($3, $4) " if after else ""
        rows = await self.fetch_all(
            "SELECT rowid, id, description, status, created_at, completed_at, "
            f"iterations FROM tasks WHERE session_id = $1 {past}"
            "ORDER BY created_at, rowid LIMIT $2",
            session_id, None if limit is None else limit + 1, *(after or ()),
        )  # fmt: skip
        return page("tasks", rows, limit, schemas.TaskSummary)

    async def tasks_before(self, session_id: str, task_id: str) -> list[dict[str, Any]]:
        return await self.fetch_all(
            "SELECT id, description, status FROM tasks WHERE session_id = $1 "
            "AND rowid < (SELECT rowid FROM tasks WHERE id = $2) ORDER BY rowid",
            session_id, task_id,
        )  # fmt: skip

    async def tasks_with_status(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        rows = await self.fetch_all(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE status = ANY($1::text[]) ORDER BY created_at",
            list(statuses),
        )
        return [_task(row) or row for row in rows]

    async def events_after(self, task_id: str, after: int) -> list[Event]:
        rows = await self.fetch_all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE task_id = $1 AND seq > $2 ORDER BY seq",
            task_id, after,
        )  # fmt: skip
        return [_event(task_id, row) for row in rows]

    async def events_page(self, task_id: str, after: int, limit: int) -> list[Event]:
        rows = await self.fetch_all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE task_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3",
            task_id, after, limit,
        )  # fmt: skip
        return [_event(task_id, row) for row in rows]

    async def task_log(self, task_id: str) -> list[Event]:
        rows = await self.fetch_all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE task_id = $1 "
            "AND type NOT IN ('token', 'turn_restart') ORDER BY seq",
            task_id,
        )
        return [_event(task_id, row) for row in rows]

    async def last_event(self, task_id: str) -> Event | None:
        row = await self.fetch_one(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE task_id = $1 ORDER BY seq DESC LIMIT 1",
            task_id,
        )
        return None if row is None else _event(task_id, row)

    # -- idempotency keys ----------------------------------------------------------------

    async def remembered_response(
        self, user_id: str, key: str, since: float
    ) -> dict[str, Any] | None:
        return await self.fetch_one(
            "SELECT fingerprint, status, body, created_at FROM idempotency_keys "
            "WHERE user_id = $1 AND key = $2 AND created_at >= $3",
            user_id, key, since,
        )  # fmt: skip

    async def remember_response(
        self,
        user_id: str,
        key: str,
        fingerprint: str,
        status: int,
        body: bytes,
        now: float,
        forget_before: float,
    ) -> None:
        # queued first, committed with the insert: expired keys go as new ones come
        self.submit(Write("DELETE FROM idempotency_keys WHERE created_at < $1", (forget_before,)))
        await self.write(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, status, body, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, key) DO UPDATE SET "
            "fingerprint = excluded.fingerprint, status = excluded.status, "
            "body = excluded.body, created_at = excluded.created_at",
            user_id, key, fingerprint, status, body, now,
        )  # fmt: skip
