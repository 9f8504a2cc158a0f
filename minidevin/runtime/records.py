"""Named queries over the store: each returns the API's shapes, scoped to an owner.

Ownership is part of every lookup (`user_id`): another user's id reads as
missing, so no route can leak whether it exists.
"""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath
from typing import Any

from minidevin.runtime import schemas
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.store import Store, Write, decode_json


def new_id() -> str:
    return str(uuid.uuid4())


def _first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


# -- users and keys --------------------------------------------------------------


async def insert_user(
    store: Store, email: str, name: str, password_hash: str | None
) -> schemas.User:
    user = schemas.User(id=new_id(), email=email, name=name, created_at=utc_now())
    await store.write(
        "INSERT INTO users (id, email, name, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        (user.id, user.email, user.name, password_hash, user.created_at),
    )
    return user


async def user_by_email(store: Store, email: str) -> dict[str, Any] | None:
    return _first(store.fetch_point("SELECT * FROM users WHERE email = ?", (email.strip(),)))


async def user_exists(store: Store, user_id: str) -> bool:
    return bool(store.fetch_point("SELECT 1 FROM users WHERE id = ?", (user_id,)))


async def insert_api_key(
    store: Store, user_id: str, name: str, key_hash: str, prefix: str, expires_at: str | None
) -> schemas.ApiKey:
    key = schemas.ApiKey(id=new_id(), name=name, created_at=utc_now(), expires_at=expires_at)
    await store.write(
        "INSERT INTO api_keys (id, user_id, name, key_hash, prefix, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (key.id, user_id, name, key_hash, prefix, key.created_at, expires_at),
    )
    return key


async def list_api_keys(store: Store, user_id: str) -> list[schemas.ApiKey]:
    rows = await store.fetch_all(
        "SELECT id, name, created_at, expires_at FROM api_keys "
        "WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at",
        (user_id,),
    )
    return [schemas.ApiKey(**row) for row in rows]


async def revoke_api_key(store: Store, user_id: str, key_id: str) -> bool:
    """Revoke one of the user's keys; False if they have no such (live) key."""
    row = await store.fetch_one(
        "SELECT 1 FROM api_keys WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
        (key_id, user_id),
    )
    if row is None:
        return False
    await store.write(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND user_id = ?",
        (utc_now(), key_id, user_id),
    )
    return True


async def api_key_by_hash(store: Store, key_hash: str) -> dict[str, Any] | None:
    return _first(
        store.fetch_point(
            "SELECT id, user_id, expires_at, revoked_at FROM api_keys WHERE key_hash = ?",
            (key_hash,),
        )
    )


# -- sessions ------------------------------------------------------------------------


async def insert_session(
    store: Store, user_id: str, name: str, working_directory: str
) -> schemas.SessionCreated:
    now = utc_now()
    session = schemas.SessionCreated(
        id=new_id(), name=name, status="active", working_directory=working_directory, created_at=now
    )
    await store.write(
        "INSERT INTO sessions (id, user_id, name, status, working_directory, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (session.id, user_id, name, session.status, working_directory, now, now),
    )
    return session


async def list_sessions(store: Store, user_id: str) -> list[schemas.SessionSummary]:
    rows = await store.fetch_all(
        "SELECT s.id, s.name, s.status, s.created_at, s.updated_at, "
        "(SELECT COUNT(*) FROM tasks t WHERE t.session_id = s.id) AS task_count "
        "FROM sessions s WHERE s.user_id = ? ORDER BY s.created_at DESC",
        (user_id,),
    )
    return [schemas.SessionSummary(**row) for row in rows]


async def session_row(store: Store, session_id: str, user_id: str) -> dict[str, Any] | None:
    return _first(
        store.fetch_point(
            "SELECT * FROM sessions WHERE id = ? AND user_id = ?", (session_id, user_id)
        )
    )


async def session_detail(
    store: Store, session_id: str, user_id: str
) -> schemas.SessionDetail | None:
    """The session with its tasks, in one query; None if the user has no such session."""
    rows = store.fetch_point(  # one session's tasks: a handful of rows through an index
        "SELECT s.id, s.name, s.status, s.working_directory, s.created_at, s.updated_at, "
        "t.id AS task_id, t.description, t.status AS task_status FROM sessions s "
        "LEFT JOIN tasks t ON t.session_id = s.id WHERE s.id = ? AND s.user_id = ? "
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
    return schemas.SessionDetail(**{k: first[k] for k in fields}, tasks=tasks)


def touch_session(session_id: str) -> Write:
    return Write("UPDATE sessions SET updated_at = ? WHERE id = ?", (utc_now(), session_id))


async def delete_session(store: Store, session_id: str) -> list[str]:
    """Delete a session with its tasks, events and artifact rows; returns artifact ids."""
    artifacts = await store.fetch_all(
        "SELECT a.id FROM artifacts a JOIN tasks t ON t.id = a.task_id WHERE t.session_id = ?",
        (session_id,),
    )
    await store.write("DELETE FROM sessions WHERE id = ?", (session_id,))
    return [row["id"] for row in artifacts]


# -- working directories -------------------------------------------------------------------


async def workspace_claims_around(store: Store, path: str) -> list[dict[str, Any]]:
    """Claims on `path`, on a directory containing it, or on one inside it."""
    ancestors = [path, *(str(parent) for parent in PurePosixPath(path).parents)]
    marks = ", ".join("?" for _ in ancestors)
    # beneath `path`: every string from "path/" up to (not including) "path0" ("0" follows "/")
    return await store.fetch_all(
        f"SELECT path, user_id FROM workspace_claims WHERE path IN ({marks}) "
        "OR (path > ? AND path < ?)",
        (*ancestors, path.rstrip("/") + "/", path.rstrip("/") + "0"),
    )


async def workspace_claim(store: Store, path: str) -> dict[str, Any] | None:
    return await store.fetch_one(
        "SELECT path, user_id, st_dev, st_ino FROM workspace_claims WHERE path = ?", (path,)
    )


async def put_workspace_claim(
    store: Store, path: str, user_id: str, identity: tuple[int, int]
) -> None:
    """Claim `path` for `user_id`, or refresh the identity of their own claim on it."""
    await store.write(
        "INSERT INTO workspace_claims (path, user_id, st_dev, st_ino, created_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET st_dev = excluded.st_dev, "
        "st_ino = excluded.st_ino WHERE workspace_claims.user_id = excluded.user_id",
        (path, user_id, str(identity[0]), str(identity[1]), utc_now()),
    )


# -- tasks -----------------------------------------------------------------------------


def insert_task(
    task_id: str,
    session_id: str,
    request: schemas.TaskRequest,
    model: str,
    max_iterations: int,
    created_at: str,
) -> Write:
    return Write(
        "INSERT INTO tasks (id, session_id, description, model, run_mode, max_iterations, "
        "max_cost_usd, context, status, created_at, run_max_iterations, run_max_cost_usd) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        (
            task_id,
            session_id,
            request.description,
            model,
            request.run_mode,
            max_iterations,
            request.max_cost_usd,
            request.context,
            created_at,
            max_iterations,
            request.max_cost_usd,
        ),
    )


async def task_row(store: Store, task_id: str, user_id: str) -> dict[str, Any] | None:
    return _first(
        store.fetch_point(
            "SELECT t.* FROM tasks t JOIN sessions s ON s.id = t.session_id "
            "WHERE t.id = ? AND s.user_id = ?",
            (task_id, user_id),
        )
    )


def task_detail(row: dict[str, Any]) -> schemas.TaskDetail:
    result = decode_json(row["result"])
    return schemas.TaskDetail(
        id=row["id"],
        session_id=row["session_id"],
        description=row["description"],
        status=row["status"],
        model=row["model"],
        run_mode=row["run_mode"],
        max_iterations=row["max_iterations"],
        max_cost_usd=row["max_cost_usd"],
        context=row["context"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        iterations=row["iterations"],
        plan=schemas.Plan(**(decode_json(row["plan"]) or {"steps": []})),
        result=schemas.TaskResult(**result) if result else None,
        usage=schemas.Usage(**(decode_json(row["usage"]) or {})),
    )


async def list_tasks(store: Store, session_id: str) -> list[schemas.TaskSummary]:
    rows = await store.fetch_all(
        "SELECT id, description, status, created_at, completed_at, iterations FROM tasks "
        "WHERE session_id = ? ORDER BY created_at",
        (session_id,),
    )
    return [schemas.TaskSummary(**row) for row in rows]


async def task_owner(store: Store, task_id: str) -> str | None:
    """The user whose session holds the task."""
    row = await store.fetch_one(
        "SELECT s.user_id FROM tasks t JOIN sessions s ON s.id = t.session_id WHERE t.id = ?",
        (task_id,),
    )
    return None if row is None else row["user_id"]


async def tasks_before(store: Store, session_id: str, task_id: str) -> list[dict[str, Any]]:
    """The session's tasks created before `task_id`, oldest first."""
    return await store.fetch_all(
        "SELECT id, description, status FROM tasks WHERE session_id = ? "
        "AND rowid < (SELECT rowid FROM tasks WHERE id = ?) ORDER BY rowid",
        (session_id, task_id),
    )


async def tasks_with_status(store: Store, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
    marks = ", ".join("?" for _ in statuses)
    return await store.fetch_all(
        f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY created_at", statuses
    )


# -- events and artifacts ------------------------------------------------------------------


async def events_after(store: Store, task_id: str, after: int) -> list[Event]:
    rows = await store.fetch_all(
        "SELECT seq, type, data, timestamp FROM events WHERE task_id = ? AND seq > ? ORDER BY seq",
        (task_id, after),
    )
    return [
        Event(task_id, row["seq"], row["type"], decode_json(row["data"]), row["timestamp"])
        for row in rows
    ]


def last_event(store: Store, task_id: str) -> Event | None:
    """The task's newest event (one index step); a final status is always the last."""
    row = _first(
        store.fetch_point(
            "SELECT seq, type, data, timestamp FROM events WHERE task_id = ? "
            "ORDER BY seq DESC LIMIT 1",
            (task_id,),
        )
    )
    if row is None:
        return None
    return Event(task_id, row["seq"], row["type"], decode_json(row["data"]), row["timestamp"])


def insert_artifact(
    artifact_id: str,
    task_id: str,
    name: str,
    type_: str,
    content_type: str,
    size: int,
    created_at: str,
) -> Write:
    return Write(
        "INSERT INTO artifacts (id, task_id, name, type, content_type, size, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (artifact_id, task_id, name, type_, content_type, size, created_at),
    )


async def set_aside_artifacts(store: Store, task_id: str) -> None:
    """Before a task is resumed: its artifacts so far become `runN-<name>` (run 1, 2, ...),
    so the new run's `plan.json`, `diff.patch` and `trajectory.json` take their names."""
    rows = await store.fetch_all("SELECT name FROM artifacts WHERE task_id = ?", (task_id,))
    names = {row["name"] for row in rows}
    run = 1 + sum(1 for name in names if name.startswith("run") and name.endswith("-plan.json"))
    await store.write(
        "UPDATE artifacts SET name = ? || name WHERE task_id = ? AND name NOT LIKE 'run%-%'",
        (f"run{run}-", task_id),
    )


async def list_artifacts(store: Store, task_id: str) -> list[schemas.Artifact]:
    rows = await store.fetch_all(
        "SELECT id, name, type, size, created_at FROM artifacts WHERE task_id = ? "
        "ORDER BY created_at, name",
        (task_id,),
    )
    return [schemas.Artifact(**row) for row in rows]


async def artifact_row(store: Store, task_id: str, artifact_id: str) -> dict[str, Any] | None:
    return _first(
        store.fetch_point(
            "SELECT * FROM artifacts WHERE id = ? AND task_id = ?", (artifact_id, task_id)
        )
    )
