"""The store on real SQLite files: migrations, batching, commit-before-publish."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from minidevin.runtime.event_types import Status, Token
from minidevin.runtime.events import Event, TaskEventLog
from minidevin.runtime.schema import SCHEMA_VERSION
from minidevin.runtime.store import Store, StoreError


async def open_store(path: Path) -> Store:
    store = Store(path)
    await store.open()
    return store


async def seed_task(store: Store, task_id: str = "t1") -> None:
    await store.write(
        "INSERT INTO users (id, email, name, created_at) VALUES ('u', 'u@example.com', 'u', 'now')"
    )
    await store.write(
        "INSERT INTO sessions (id, user_id, name, status, working_directory, created_at, "
        "updated_at) VALUES ('s', 'u', 's', 'active', '/tmp', 'now', 'now')"
    )
    await store.write(
        "INSERT INTO tasks (id, session_id, description, model, run_mode, max_iterations, status, "
        "created_at) VALUES (?, 's', 'd', 'm', 'offline', 5, 'queued', 'now')",
        (task_id,),
    )


async def test_new_database_is_migrated_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "db.sqlite3")
    try:
        assert (await store.fetch_one("PRAGMA user_version"))["user_version"] == SCHEMA_VERSION
        assert (await store.fetch_one("PRAGMA journal_mode"))["journal_mode"] == "wal"
        with pytest.raises(StoreError):  # a task of no session violates the foreign key
            await store.write(
                "INSERT INTO tasks (id, session_id, description, model, run_mode, "
                "max_iterations, status, created_at) VALUES ('x', 'nope', 'd', 'm', 'offline', "
                "1, 'queued', 'now')"
            )
    finally:
        await store.close()


async def test_a_newer_schema_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this minidevin"):
        await open_store(path)


async def test_events_are_published_only_after_commit_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = await open_store(path)
    published: list[Event] = []
    seen_on_disk: list[int] = []

    def on_commit(events: list[Event]) -> None:
        # whatever is published must already be readable by another connection
        with sqlite3.connect(path) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        seen_on_disk.append(count)
        published.extend(events)

    store.on_events_committed = on_commit
    try:
        await seed_task(store)
        log = TaskEventLog("t1", store.submit)
        emitters = [
            asyncio.to_thread(lambda: [log.emit(Token(content=str(i))) for i in range(500)])
            for _ in range(4)
        ]
        await asyncio.gather(*emitters)
        await store.flush()
        assert [e.seq for e in published] == list(range(1, 2001))
        assert all(count >= 1 for count in seen_on_disk)
        assert sum(1 for _ in seen_on_disk) < 2000, "events should be committed in batches"
    finally:
        await store.close()


async def test_one_bad_write_does_not_lose_the_rest_of_its_batch(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "db.sqlite3")
    try:
        await seed_task(store)
        log = TaskEventLog("t1", store.submit)
        log.emit(Status(status="running", message=""))
        bad = store.write("INSERT INTO nowhere VALUES (1)")
        log.emit(Status(status="completed", message=""))
        with pytest.raises(StoreError):
            await bad
        await store.flush()
        rows = await store.fetch_all("SELECT seq FROM events WHERE task_id = 't1' ORDER BY seq")
        assert [row["seq"] for row in rows] == [1, 2]
    finally:
        await store.close()


async def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = await open_store(path)
    await seed_task(store)
    TaskEventLog("t1", store.submit).emit(Status(status="queued", message="Task queued"))
    await store.close()
    reopened = await open_store(path)
    try:
        rows = await reopened.fetch_all("SELECT type, data FROM events")
        assert rows == [{"type": "status", "data": '{"status":"queued","message":"Task queued"}'}]
    finally:
        await reopened.close()
