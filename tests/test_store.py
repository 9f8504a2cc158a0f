"""The store through its interface, on each backend: batching, commit-before-publish,
projection, ordering, errors, durability. SQLite specifics are at the end."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from store_backends import Backend, backend  # noqa: F401 (the fixture)
from waiting import until

from minidevin.runtime import schemas
from minidevin.runtime.event_types import Status, Token
from minidevin.runtime.events import Event, TaskEventLog, utc_now
from minidevin.runtime.storage import AlreadyExists, ArtifactRow, Store, StoreError, new_id
from minidevin.runtime.storage.sqlite_schema import SCHEMA_VERSION


async def opened(backend: Backend) -> Store:  # noqa: F811
    store = backend.store()
    await store.open()
    return store


async def seed_task(store: Store, task_id: str = "t1") -> tuple[str, str]:
    """A user, a session and a queued task; returns (user id, session id)."""
    user = await store.insert_user(f"{task_id}@example.com", "u", None)
    session = await store.insert_session(user.id, "s", "/tmp")
    request = schemas.TaskRequest(description="d")
    await store.insert_task(task_id, session.id, request, "m", 5, utc_now())
    return user.id, session.id


async def test_a_task_of_no_session_and_a_duplicate_email_are_refused(
    backend: Backend,  # noqa: F811
) -> None:
    store = await opened(backend)
    try:
        request = schemas.TaskRequest(description="d")
        with pytest.raises(StoreError):  # a task of no session violates the foreign key
            await store.insert_task("x", "nope", request, "m", 1, utc_now())
        await store.insert_user("a@example.com", "a", None)
        with pytest.raises(AlreadyExists):
            await store.insert_user("a@example.com", "again", None)
    finally:
        await store.close()


async def test_a_newer_schema_refuses_to_open(backend: Backend) -> None:  # noqa: F811
    backend.plant_newer_schema()
    with pytest.raises(StoreError, match="newer than this minidevin"):
        await opened(backend)


async def test_events_are_published_only_after_commit_and_in_order(
    backend: Backend,  # noqa: F811
) -> None:
    store = await opened(backend)
    published: list[Event] = []
    seen_committed: list[int] = []

    def on_commit(events: list[Event]) -> None:
        # whatever is published must already be readable by another connection
        seen_committed.append(backend.committed_events())
        published.extend(events)

    store.on_events_committed = on_commit
    try:
        await seed_task(store)
        log = TaskEventLog("t1", store.append)
        emitters = [
            asyncio.to_thread(lambda: [log.emit(Token(content=str(i))) for i in range(500)])
            for _ in range(4)
        ]
        await asyncio.gather(*emitters)
        await store.flush()
        assert [e.seq for e in published] == list(range(1, 2001))
        assert all(count >= 1 for count in seen_committed)
        assert len(seen_committed) < 2000, "events should be committed in batches"
        assert [e.seq for e in await store.events_after("t1", 1990)] == list(range(1991, 2001))
    finally:
        await store.close()


async def test_one_bad_write_does_not_lose_the_rest_of_its_batch(
    backend: Backend,  # noqa: F811
) -> None:
    store = await opened(backend)
    try:
        await seed_task(store)
        log = TaskEventLog("t1", store.append)
        log.emit(Status(status="running", message=""))
        request = schemas.TaskRequest(description="d")
        bad = asyncio.ensure_future(store.insert_task("x", "nope", request, "m", 1, utc_now()))
        await asyncio.sleep(0)  # (queued between the two events)
        log.emit(Status(status="completed", message=""))
        with pytest.raises(StoreError):
            await bad
        await store.flush()
        assert [event.seq for event in await store.events_after("t1", 0)] == [1, 2]
    finally:
        await store.close()


async def test_the_task_row_follows_its_events_and_the_generation_its_writes(
    backend: Backend,  # noqa: F811
) -> None:
    store = await opened(backend)
    try:
        user_id, session_id = await seed_task(store)
        told: list[tuple[str, int]] = []  # (event type, generation when it was published)
        store.on_events_committed = lambda events: told.extend(
            (event.type, store.generation) for event in events
        )
        generation = store.generation
        log = TaskEventLog("t1", store.append)
        log.emit(Token(content="x"))
        await until(lambda: bool(told), what="the token's commit")
        log.emit(Status(status="running", message=""))
        log.emit(Status.model_validate({"status": "completed", "message": "", "result": {
            "success": True, "summary": "done"}}))  # fmt: skip
        await store.flush()
        # a bare event leaves cached reads current; a projected one is seen moved
        assert told[0] == ("token", generation)
        assert told[-1][0] == "status" and told[-1][1] > generation
        row = await store.task_row("t1", user_id)
        assert row is not None and row["status"] == "completed"
        assert row["started_at"] is not None and row["result"]["summary"] == "done"
        assert await store.task_row("t1", "someone else") is None
        newest = await store.last_event("t1")
        assert newest is not None and newest.seq == 3 and newest.is_final
        assert await store.task_owner("t1") == user_id
        detail = await store.session_detail(session_id, user_id)
        assert detail is not None and [t.status for t in detail.tasks] == ["completed"]
    finally:
        await store.close()


async def test_queued_writes_keep_their_order_with_events(backend: Backend) -> None:  # noqa: F811
    store = await opened(backend)
    try:
        user_id, session_id = await seed_task(store)
        before = (await store.session_row(session_id, user_id) or {})["updated_at"]
        log = TaskEventLog("t1", store.append)
        store.touch_session(session_id)
        log.emit(Status(status="running", message=""))
        rows = [ArtifactRow(new_id(), "t1", "plan.json", "plan", "application/json", 2, utc_now())]
        seen: list[tuple[list[str], str]] = []

        def on_commit(events: list[Event]) -> None:  # the rows are there when the event is
            seen.append(([event.type for event in events], "queued"))

        store.on_events_committed = on_commit
        store.add_artifacts(rows)
        log.emit(Status(status="completed", message=""))
        await store.flush()
        (artifact,) = await store.list_artifacts("t1")
        assert artifact.name == "plan.json" and artifact.size == 2
        assert await store.artifact_row("t1", artifact.id) is not None
        await store.set_aside_artifacts("t1")
        assert [a.name for a in await store.list_artifacts("t1")] == ["run1-plan.json"]
        after = (await store.session_row(session_id, user_id) or {})["updated_at"]
        assert after >= before
        assert await store.delete_session(session_id) == [artifact.id]
        assert await store.events_after("t1", 0) == []
    finally:
        await store.close()


async def test_data_survives_reopening(backend: Backend) -> None:  # noqa: F811
    store = await opened(backend)
    await seed_task(store)
    TaskEventLog("t1", store.append).emit(Status(status="queued", message="Task queued"))
    await store.close()
    reopened = await opened(backend)
    try:
        (event,) = await reopened.events_after("t1", 0)
        assert (event.type, event.data) == (
            "status",
            {"status": "queued", "message": "Task queued"},
        )
    finally:
        await reopened.close()


async def test_call_blocking_reads_after_what_was_queued(backend: Backend) -> None:  # noqa: F811
    store = await opened(backend)
    try:
        await seed_task(store)
        log = TaskEventLog("t1", store.append)

        def from_an_actor() -> list[Event]:
            log.emit(Token(content="x"))
            return store.call_blocking(lambda: store.events_after("t1", 0))

        assert [event.seq for event in await asyncio.to_thread(from_an_actor)] == [1]
    finally:
        await store.close()


# -- SQLite itself ------------------------------------------------------------------------


async def test_sqlite_is_migrated_with_wal_and_foreign_keys(backend: Backend) -> None:  # noqa: F811
    if backend.name != "sqlite":
        pytest.skip("SQLite only")
    store = await opened(backend)
    await store.close()
    with sqlite3.connect(backend.settings().database_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
