"""`SqliteStore`: the storage interface's domain methods as SQLite statements.

The engine below it (`sqlite_engine.py`) batches the writes, keeps the
readers and the write generation; this module holds the SQL. Point lookups
through an index (credentials, the session or task a request names) use the
engine's `fetch_point`, right on the loop thread; scans use `fetch_all`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from minidevin.runtime import schemas
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.pagination import Page, page
from minidevin.runtime.storage.interface import ArtifactRow, new_id
from minidevin.runtime.storage.rows import session_options
from minidevin.runtime.storage.sqlite_accounts import SqliteAccounts
from minidevin.runtime.storage.sqlite_approvals import SqliteApprovals
from minidevin.runtime.storage.sqlite_batch import Write, decode_json, first_row
from minidevin.runtime.storage.sqlite_retention import SqliteRetention
from minidevin.runtime.storage.sqlite_secrets import SqliteSecrets
from minidevin.runtime.storage.sqlite_webhooks import SqliteWebhooks
from minidevin.runtime.storage.sqlite_wire import wire_page

_TASK_JSON = ("plan", "result", "usage")


def _task(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is not None:
        for name in _TASK_JSON:
            row[name] = decode_json(row[name])
    return row


def _event(task_id: str, row: dict[str, Any]) -> Event:
    return Event(task_id, row["seq"], row["type"], decode_json(row["data"]), row["timestamp"])


class SqliteStore(SqliteAccounts, SqliteRetention, SqliteSecrets, SqliteApprovals, SqliteWebhooks):
    """The `Store` on one SQLite file (WAL), migrated on open."""

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
        await self.write(
            "INSERT INTO sessions (id, user_id, name, status, working_directory, created_at, "
            f"updated_at, {', '.join(row)}) VALUES (?, ?, ?, ?, ?, ?, ?{', ?' * len(row)})",
            (*(session.id, user_id, name, session.status, working_directory, now, now),
             *row.values()),
        )  # fmt: skip
        return session

    async def list_sessions(
        self, user_id: str, *, limit: int | None = None, after: tuple[str, int] | None = None
    ) -> Page[schemas.SessionSummary]:
        past = "AND (s.created_at, s.rowid) < (?, ?) " if after else ""
        rows = await self.fetch_all(
            "SELECT s.rowid AS rowid, s.id, s.name, s.status, s.created_at, s.updated_at, "
            "(SELECT COUNT(*) FROM tasks t WHERE t.session_id = s.id) AS task_count "
            f"FROM sessions s WHERE s.user_id = ? {past}"
            "ORDER BY s.created_at DESC, s.rowid DESC LIMIT ?",
            (user_id, *(after or ()), -1 if limit is None else limit + 1),
        )
        return page("sessions", rows, limit, schemas.SessionSummary)

    async def session_row(self, session_id: str, user_id: str) -> dict[str, Any] | None:
        return first_row(
            self.fetch_point(
                "SELECT * FROM sessions WHERE id = ? AND user_id = ?", (session_id, user_id)
            )
        )

    async def session_detail(self, session_id: str, user_id: str) -> schemas.SessionDetail | None:
        rows = self.fetch_point(  # one session's tasks: a handful of rows through an index
            "SELECT s.id, s.name, s.status, s.working_directory, s.created_at, s.updated_at, "
            "s.approval_policy, s.mcp_servers, t.id AS task_id, t.description, "
            "t.status AS task_status FROM sessions s LEFT JOIN tasks t ON t.session_id = s.id "
            "WHERE s.id = ? AND s.user_id = ? "
            "ORDER BY t.created_at",
            (session_id, user_id),
        )
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
            Write("UPDATE sessions SET updated_at = ? WHERE id = ?", (utc_now(), session_id))
        )

    def claim_run(self, task_id: str, timeout: float = 5.0) -> bool:
        return True  # (one node owns the data directory: nothing to claim from)

    async def delete_session(self, session_id: str) -> list[str]:
        artifacts = await self.fetch_all(
            "SELECT a.id FROM artifacts a JOIN tasks t ON t.id = a.task_id WHERE t.session_id = ?",
            (session_id,),
        )
        await self.write("DELETE FROM sessions WHERE id = ?", (session_id,))
        return [row["id"] for row in artifacts]

    async def session_node(self, session_id: str) -> tuple[bool, str | None]:
        row = await self.fetch_one("SELECT node FROM sessions WHERE id = ?", (session_id,))
        return (False, None) if row is None else (True, row["node"])

    async def place_session(self, session_id: str, node: str, expected: str | None) -> str | None:
        await self.write(
            "UPDATE sessions SET node = ? WHERE id = ? AND node IS ?", (node, session_id, expected)
        )
        return (await self.session_node(session_id))[1]

    async def sessions_on(self, node: str) -> list[dict[str, Any]]:
        return await self.fetch_all(
            "SELECT id, user_id, working_directory FROM sessions WHERE node = ?", (node,)
        )

    async def workspace_claims_around(self, path: str) -> list[dict[str, Any]]:
        ancestors = [path, *(str(parent) for parent in PurePosixPath(path).parents)]
        marks = ", ".join("?" for _ in ancestors)
        # beneath `path`: every string from "path/" up to (not including) "path0" ("0" follows "/")
        return await self.fetch_all(
            f"SELECT path, user_id FROM workspace_claims WHERE path IN ({marks}) "
            "OR (path > ? AND path < ?)",
            (*ancestors, path.rstrip("/") + "/", path.rstrip("/") + "0"),
        )

    async def workspace_claim(self, path: str) -> dict[str, Any] | None:
        return await self.fetch_one(
            "SELECT path, user_id, st_dev, st_ino, st_uid, st_gid FROM workspace_claims "
            "WHERE path = ?",
            (path,),
        )

    async def put_workspace_claim(
        self, path: str, user_id: str, identity: tuple[int, int], owner: tuple[int, int]
    ) -> None:
        await self.write(
            "INSERT INTO workspace_claims (path, user_id, st_dev, st_ino, st_uid, st_gid, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
            "st_dev = excluded.st_dev, st_ino = excluded.st_ino, st_uid = excluded.st_uid, "
            "st_gid = excluded.st_gid WHERE workspace_claims.user_id = excluded.user_id",
            (path, user_id, str(identity[0]), str(identity[1]), str(owner[0]), str(owner[1]),
             utc_now()),
        )  # fmt: skip

    # -- tasks, events, artifacts --------------------------------------------------------

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
            "approval_policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
            (task_id, session_id, request.description, model, request.run_mode, max_iterations,
             request.max_cost_usd, request.context, created_at, max_iterations,
             request.max_cost_usd, approval_policy),
        )  # fmt: skip

    async def task_row(self, task_id: str, user_id: str) -> dict[str, Any] | None:
        return _task(
            first_row(
                self.fetch_point(
                    "SELECT t.* FROM tasks t JOIN sessions s ON s.id = t.session_id "
                    "WHERE t.id = ? AND s.user_id = ?",
                    (task_id, user_id),
                )
            )
        )

    async def task_owner(self, task_id: str) -> str | None:
        row = await self.fetch_one(
            "SELECT s.user_id FROM tasks t JOIN sessions s ON s.id = t.session_id WHERE t.id = ?",
            (task_id,),
        )
        return None if row is None else row["user_id"]

    async def list_tasks(
        self, session_id: str, *, limit: int | None = None, after: tuple[str, int] | None = None
    ) -> Page[schemas.TaskSummary]:
        past = "AND (created_at, rowid) > (?, ?) " if after else ""
        rows = await self.fetch_all(
            "SELECT rowid AS rowid, id, description, status, created_at, completed_at, "
            f"iterations FROM tasks WHERE session_id = ? {past}"
            "ORDER BY created_at, rowid LIMIT ?",
            (session_id, *(after or ()), -1 if limit is None else limit + 1),
        )
        return page("tasks", rows, limit, schemas.TaskSummary)

    async def tasks_before(self, session_id: str, task_id: str) -> list[dict[str, Any]]:
        return await self.fetch_all(
            "SELECT id, description, status FROM tasks WHERE session_id = ? "
            "AND rowid < (SELECT rowid FROM tasks WHERE id = ?) ORDER BY rowid",
            (session_id, task_id),
        )

    async def tasks_with_status(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        marks = ", ".join("?" for _ in statuses)
        rows = await self.fetch_all(
            f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY created_at", tuple(statuses)
        )
        return [_task(row) or row for row in rows]

    async def events_after(self, task_id: str, after: int) -> list[Event]:
        rows = await self.fetch_all(
            "SELECT seq, type, data, timestamp FROM events WHERE task_id = ? AND seq > ? "
            "ORDER BY seq",
            (task_id, after),
        )
        return [_event(task_id, row) for row in rows]

    async def events_page(self, task_id: str, after: int, limit: int) -> list[Event]:
        rows = await self.fetch_all(
            "SELECT seq, type, data, timestamp FROM events WHERE task_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (task_id, after, limit),
        )
        return [_event(task_id, row) for row in rows]

    async def events_wire_page(
        self, task_id: str, after: int, limit: int
    ) -> list[tuple[int, bool, str]]:
        assert self._reader is not None, "store is not open"
        return await wire_page(self._reader, task_id, after, limit)

    async def task_log(self, task_id: str) -> list[Event]:
        rows = await self.fetch_all(
            "SELECT seq, type, data, timestamp FROM events WHERE task_id = ? "
            "AND type NOT IN ('token', 'turn_restart') ORDER BY seq",
            (task_id,),
        )
        return [_event(task_id, row) for row in rows]

    async def last_event(self, task_id: str) -> Event | None:
        row = first_row(
            self.fetch_point(
                "SELECT seq, type, data, timestamp FROM events WHERE task_id = ? "
                "ORDER BY seq DESC LIMIT 1",
                (task_id,),
            )
        )
        return None if row is None else _event(task_id, row)

    def add_artifacts(self, rows: Sequence[ArtifactRow]) -> None:
        for row in rows:
            self.submit(
                Write(
                    "INSERT INTO artifacts (id, task_id, name, type, content_type, size, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row.id, row.task_id, row.name, row.type, row.content_type, row.size,
                     row.created_at),
                )
            )  # fmt: skip

    async def set_aside_artifacts(self, task_id: str) -> None:
        rows = await self.fetch_all("SELECT name FROM artifacts WHERE task_id = ?", (task_id,))
        names = {row["name"] for row in rows}
        run = 1 + sum(1 for name in names if name.startswith("run") and name.endswith("-plan.json"))
        await self.write(
            "UPDATE artifacts SET name = ? || name WHERE task_id = ? AND name NOT LIKE 'run%-%'",
            (f"run{run}-", task_id),
        )

    async def list_artifacts(self, task_id: str) -> list[schemas.Artifact]:
        rows = await self.fetch_all(
            "SELECT id, name, type, size, created_at FROM artifacts WHERE task_id = ? "
            "ORDER BY created_at, name",
            (task_id,),
        )
        return [schemas.Artifact(**row) for row in rows]

    async def artifact_row(self, task_id: str, artifact_id: str) -> dict[str, Any] | None:
        return first_row(
            self.fetch_point(
                "SELECT * FROM artifacts WHERE id = ? AND task_id = ?", (artifact_id, task_id)
            )
        )

    async def artifact_content_part(
        self, artifact_id: str, offset: int, length: int
    ) -> bytes | None:
        return None  # (the file in the data directory is all there is)

    # -- idempotency keys ----------------------------------------------------------------

    async def remembered_response(
        self, user_id: str, key: str, since: float
    ) -> dict[str, Any] | None:
        return first_row(
            self.fetch_point(
                "SELECT fingerprint, status, body, created_at FROM idempotency_keys "
                "WHERE user_id = ? AND key = ? AND created_at >= ?",
                (user_id, key, since),
            )
        )

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
        self.submit(Write("DELETE FROM idempotency_keys WHERE created_at < ?", (forget_before,)))
        await self.write(
            "INSERT OR REPLACE INTO idempotency_keys (user_id, key, fingerprint, status, body, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (user_id, key, fingerprint, status, body, now),
        )
