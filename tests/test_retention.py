"""Retention: finished tasks older than `retention_days` go with their events and artifact
files, in batches, while the API answers; live, queued and recent tasks and the sessions
stay. Tasks are made "old" by writing their end timestamps straight into the database
(`direct_db`: on each backend)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from conftest import provider_env
from direct_db import Direct, direct_database
from http_helpers import sign_up
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from waiting import until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.retention import sweep
from minidevin.runtime.settings import Settings

OLD = "2020-01-01T00:00:00.000Z"
ASK_FOREVER = "keep-asking"
EXTRA_EVENTS = 20_000
MAX_PROBES = 100_000  # requests sent while a sweep runs (it ends long before)


def respond(body: dict[str, Any]) -> ScriptedTurn:
    """Tasks finish at once; one told to keep asking asks forever (stays live)."""
    if ASK_FOREVER in json.dumps(body["messages"][:2]):
        return ScriptedTurn(tool_calls=[("ask_user", {"question": "and now?"})])
    return finish()


def count(db: Direct, table: str, task_id: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table} WHERE task_id = ?", (task_id,))[0][0])


def artifact_files(runtime: Runtime, db: Direct, task_id: str) -> list[Path]:
    rows = db.execute("SELECT id FROM artifacts WHERE task_id = ?", (task_id,))
    return [runtime.settings.artifacts_dir / row[0] for row in rows]


def age(db: Direct, task_id: str, status: str | None = None) -> None:
    """The task ended (or, if live, was created) long ago, as its row and log say."""
    db.execute(
        "UPDATE tasks SET created_at = ?, started_at = ?, "
        "completed_at = CASE WHEN completed_at IS NULL THEN NULL ELSE ? END, "
        "status = COALESCE(?, status) WHERE id = ?",
        (OLD, OLD, OLD, status, task_id),
    )
    db.execute("UPDATE events SET timestamp = ? WHERE task_id = ?", (OLD, task_id))  # (its log too)


def add_events(db: Direct, task_id: str, how_many: int) -> None:
    first = db.execute("SELECT max(seq) FROM events WHERE task_id = ?", (task_id,))[0][0]
    rows = ((task_id, first + n, "log", '{"text": "x"}', OLD) for n in range(1, how_many + 1))
    db.executemany(
        "INSERT INTO events (task_id, seq, type, data, timestamp) VALUES (?,?,?,?,?)", rows
    )


async def finished_task(
    runtime: Runtime, session_id: str, description: str, owner: str | None = None
) -> str:
    task = await runtime.create_task(session_id, description, owner=owner)
    detail = await runtime.wait(task.id, owner=owner)
    assert detail.status == "completed", detail
    return task.id


async def test_a_sweep_deletes_old_finished_tasks_in_batches_while_the_api_answers(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, aiohttp_client: Any, tmp_path: Path
) -> None:
    openai_server.responder = respond
    client: TestClient = await aiohttp_client(create_app(runtime, manage_runtime=False))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    user = await sign_up(client)
    owner = user.id
    done = await runtime.create_session("done", tmp_path / "a", owner=owner)
    busy = await runtime.create_session("busy", tmp_path / "b", owner=owner)
    old_big = await finished_task(runtime, done.id, "one", owner)
    old_failed = await finished_task(runtime, done.id, "two", owner)
    recent = await finished_task(runtime, done.id, "three", owner)
    live = await runtime.create_task(busy.id, f"{ASK_FOREVER} please", owner=owner)
    queued = await runtime.create_task(busy.id, "after the live one", owner=owner)
    assert queued.status == "queued"
    with direct_database(runtime.settings) as db:
        await until(
            lambda: db.execute("SELECT 1 FROM tasks WHERE id = ? AND status = 'waiting_input'",
                               (live.id,)),
            what="the live task waiting for input",
        )  # fmt: skip
        for task_id, status in ((old_big, None), (old_failed, "failed"), (live.id, None),
                                (queued.id, None)):  # fmt: skip
            age(db, task_id, status)
        add_events(db, old_big, EXTRA_EVENTS)
        big_events = count(db, "events", old_big)
        deleted_files = artifact_files(runtime, db, old_big) + artifact_files(
            runtime, db, old_failed
        )
        kept_files = artifact_files(runtime, db, recent)
        assert len(deleted_files) == 6 and len(kept_files) == 3
        assert all(path.is_file() for path in deleted_files + kept_files)

        sweeping = asyncio.create_task(
            sweep(runtime.store, runtime.settings.artifacts_dir, 1.0, event_batch=500)
        )
        answered_midway = 0  # requests answered while the big task was half deleted
        for _ in range(MAX_PROBES):
            if sweeping.done():
                break
            health = await client.get("/health")
            assert health.status == 200
            task = await client.get(f"/api/tasks/{recent}", headers=user.key)
            assert task.status == 200
            if 0 < count(db, "events", old_big) < big_events:
                answered_midway += 1
        result = await sweeping
        assert answered_midway >= 1  # the API was not blocked while events went in batches

        assert (result.tasks, result.artifacts) == (2, 6)
        assert result.events >= big_events
        for gone in (old_big, old_failed):
            assert count(db, "events", gone) == 0 and count(db, "artifacts", gone) == 0
            assert (await client.get(f"/api/tasks/{gone}", headers=user.key)).status == 404
        assert not any(path.exists() for path in deleted_files)
        assert all(path.is_file() for path in kept_files)
        for kept in (recent, live.id, queued.id):
            assert (await client.get(f"/api/tasks/{kept}", headers=user.key)).status == 200
            assert count(db, "events", kept) > 0
        assert [t.id for t in (await runtime.get_session(done.id, owner=owner)).tasks] == [recent]
        assert len((await runtime.get_session(busy.id, owner=owner)).tasks) == 2
    await runtime.stop_task(live.id, owner=owner)


async def test_the_runtime_sweeps_at_start_only_with_the_setting(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.responder = respond
    env = provider_env(openai_server)
    async with Runtime(settings, provider_env=env) as runtime:
        assert runtime.retention is None  # unset: keep forever
        session = await runtime.create_session("s", tmp_path)
        old = await finished_task(runtime, session.id, "old")
        recent = await finished_task(runtime, session.id, "recent")
        user_id = await runtime.owner(None)
    with direct_database(settings) as db:
        age(db, old)
        db.execute(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, status, body, created_at) "
            "VALUES (?, 'stale', 'f', 201, ?, ?), (?, 'fresh', 'f', 201, ?, ?)",
            (user_id, b"\x00", time.time() - 2 * 24 * 3600, user_id, b"\x00", time.time()),
        )
    async with Runtime(settings, provider_env=env) as runtime:
        assert runtime.retention is None
        assert len((await runtime.get_session(session.id)).tasks) == 2  # nothing deleted

    keeping = settings.model_copy(update={"retention_days": 1.0})
    async with Runtime(keeping, provider_env=env) as runtime:
        assert runtime.retention is not None
        await until(lambda: runtime.retention.sweeps >= 1, what="the first sweep")
        assert [t.id for t in (await runtime.get_session(session.id)).tasks] == [recent]
    with direct_database(settings) as db:
        assert count(db, "events", old) == 0
        keys = db.execute("SELECT key FROM idempotency_keys")
        assert keys == [("fresh",)]


async def test_a_task_resumed_while_the_sweep_waits_for_its_session_stays(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.responder = respond
    session = await runtime.create_session("s", tmp_path)
    task_id = await finished_task(runtime, session.id, "old")
    with direct_database(runtime.settings) as db:
        age(db, task_id, "stopped")
        events = count(db, "events", task_id)
        session_lock, asked = asyncio.Lock(), asyncio.Event()

        def lock_for(session_id: str) -> asyncio.Lock:
            assert session_id == session.id
            asked.set()  # the sweep found the task and now waits for its session
            return session_lock

        async with session_lock:  # (as `Runtime.resume_task` holds it)
            sweeping = asyncio.create_task(
                sweep(runtime.store, runtime.settings.artifacts_dir, 1.0, lock_for=lock_for)
            )
            await asyncio.wait_for(asked.wait(), 10)
            db.execute("UPDATE tasks SET status = 'running', completed_at = NULL WHERE id = ?",
                       (task_id,))  # fmt: skip
        result = await sweeping
        assert (result.tasks, result.events) == (0, 0)
        assert count(db, "events", task_id) == events
        assert (await runtime.get_task(task_id)).status == "running"
        db.execute("UPDATE tasks SET status = 'stopped' WHERE id = ?", (task_id,))
