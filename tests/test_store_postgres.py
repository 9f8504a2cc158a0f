"""What only the PostgreSQL store promises: several servers start on one database and
migrate it once; a connection the server ends mid-stream loses nothing; a server
stopped and started again while events arrive has them held, then committed in
order; the URL's password is in no message and no log line; text with NUL is kept.

Each test has a database of its own in the run's throwaway server (skipped where
PostgreSQL is not installed); the restart test has a server of its own.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import asyncpg
import pytest
from pg_server import ThrowawayPostgres
from waiting import until

from minidevin.runtime import schemas
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.logging import use_host_logging
from minidevin.runtime.storage import StoreError
from minidevin.runtime.storage.postgres import PostgresStore
from minidevin.runtime.storage.postgres_schema import SCHEMA_VERSION, migrate
from minidevin.runtime.storage.postgres_text import store_text, stored_text

PASSWORD = "s3cret-Pa55:/@word"  # (characters a URL must %-encode)


@pytest.fixture
def empty_database(postgres_server: ThrowawayPostgres) -> Iterator[str]:
    """A new database with nothing in it (not migrated); its URL."""
    name = "t_" + uuid.uuid4().hex
    url = postgres_server.create_database(name)
    yield url
    postgres_server.sync.execute(postgres_server.url(), f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def own_server(postgres_server: ThrowawayPostgres) -> Iterator[ThrowawayPostgres]:
    """A server of the test's own, to stop and start (the run's server serves the others)."""
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def seed_task(store: PostgresStore) -> str:
    user = await store.insert_user(f"{uuid.uuid4().hex}@example.com", "u", None)
    session = await store.insert_session(user.id, "s", "/tmp")
    task_id = str(uuid.uuid4())
    request = schemas.TaskRequest(description="d")
    await store.insert_task(task_id, session.id, request, "m", 5, utc_now())
    return task_id


def token(task_id: str, seq: int) -> Event:
    return Event(task_id, seq, "token", {"text": f"w{seq}"}, utc_now())


def terminate_others(server: ThrowawayPostgres, url: str) -> int:
    """End every other connection to the database of `url`, as an administrator (or a
    failover) would; how many there were."""
    rows = server.sync.execute(
        url,
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    return int(rows[0]["n"])


async def test_stores_starting_at_once_migrate_the_database_once(
    postgres_server: ThrowawayPostgres, empty_database: str
) -> None:
    connections = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(conn, "test") for conn in connections))
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))
    everything = list(range(1, SCHEMA_VERSION + 1))
    assert sorted(applied) == [[], [], [], everything]  # one migrated; the others found it done

    other = postgres_server.create_database("t_" + uuid.uuid4().hex)
    stores = [PostgresStore(other) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        rows = postgres_server.sync.execute(other, "SELECT version FROM schema_version")
        assert sorted(row["version"] for row in rows) == everything
        user = await stores[0].insert_user("one@example.com", "One", None)
        assert (await stores[3].user_by_email("one@example.com"))["id"] == user.id
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_connections_ended_mid_stream_lose_no_event(
    postgres_server: ThrowawayPostgres, empty_database: str
) -> None:
    store = PostgresStore(empty_database, retry_seconds=20)
    await store.open()
    published: list[Event] = []
    store.on_events_committed = published.extend
    try:
        task_id = await seed_task(store)
        ended: list[int] = []
        for seq in range(1, 601):
            store.append(token(task_id, seq))
            if seq % 150 == 0:  # while earlier events may still be on their way
                before = len(published)  # (a commit since the last kill: the writer is back)
                await until(lambda n=before: len(published) > n, what="a commit")
                ended.append(terminate_others(postgres_server, empty_database))
            if seq % 10 == 0:
                await asyncio.sleep(0)  # (the writer runs between appends, as in a live task)
        await asyncio.wait_for(store.flush(), 20)
        assert len(ended) == 4 and min(ended) >= 1  # (the writer's, each time)
        stored = await store.events_after(task_id, 0)
    finally:
        await store.close()
    assert [event.seq for event in stored] == list(range(1, 601))
    assert [event.seq for event in published] == list(range(1, 601))  # each once, in order


async def test_a_server_restarted_while_events_arrive_gets_them_all_in_order(
    own_server: ThrowawayPostgres,
) -> None:
    url = own_server.create_database("t_restart")
    store = PostgresStore(url, retry_seconds=60)
    await store.open()
    published: list[Event] = []
    store.on_events_committed = published.extend
    try:
        task_id = await seed_task(store)
        for seq in range(1, 51):
            store.append(token(task_id, seq))
        await store.flush()
        own_server.halt()
        for seq in range(51, 101):  # arriving while the server is down
            store.append(token(task_id, seq))
            await asyncio.sleep(0)
        await until(lambda: store.outage.down and store.held_events > 0, 10, "events held")
        assert [event.seq for event in published] == list(range(1, 51))  # nothing more yet
        await asyncio.to_thread(own_server.resume)
        await asyncio.wait_for(store.flush(), 30)
        assert not store.outage.down
        stored = await store.events_after(task_id, 0)
    finally:
        await store.close()
    assert [event.seq for event in stored] == list(range(1, 101))
    assert [event.seq for event in published] == list(range(1, 101))


async def test_the_urls_password_is_in_no_error_and_no_log(
    postgres_server: ThrowawayPostgres,
    empty_database: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_host_logging()
    caplog.set_level(logging.DEBUG)
    secret = quote(PASSWORD, safe="")
    host = f"127.0.0.1:{postgres_server.port}"
    database = empty_database.rsplit("/", 1)[1]
    errors: list[str] = []
    for url in (
        f"postgresql://postgres:{secret}@{host}/no_such_database",
        f"postgresql://nobody:{secret}@{host}/{database}",
        f"postgresql://postgres:{secret}@127.0.0.1:1/{database}",  # refused: retried, then given up
    ):
        with pytest.raises(StoreError) as refused:
            await PostgresStore(url, retry_seconds=0.3).open()
        errors.append(str(refused.value))
    assert "no_such_database" in errors[0] and f"127.0.0.1:1/{database}" in errors[2]

    # a store that works, then loses its connections (trust authentication: any password)
    store = PostgresStore(f"postgresql://postgres:{secret}@{host}/{database}", retry_seconds=10)
    await store.open()
    try:
        task_id = await seed_task(store)
        terminate_others(postgres_server, empty_database)
        store.append(token(task_id, 1))
        await asyncio.wait_for(store.flush(), 10)
        assert [event.seq for event in await store.events_after(task_id, 0)] == [1]
    finally:
        await store.close()
    captured = capsys.readouterr()
    told = "\n".join([*errors, caplog.text, captured.out, captured.err])
    assert "store_open_retrying" in told  # (the refused server was logged about)
    for form in (PASSWORD, secret, PASSWORD.split(":")[0]):
        assert form not in told


def test_escaped_text_round_trips_and_keeps_its_order() -> None:
    texts = ["", "a", "\x00", "\x01", "\x02", "a\x00", "a\x00b", "a\x01", "a\x010", "\x01\x00",
             "\x00\x01", "0", "1", "\x010", "\x011", "z\u00e9\U0001f600\x00"]  # fmt: skip
    for text in texts:
        stored = store_text(text)
        assert "\x00" not in stored and stored_text(stored) == text
    assert sorted(texts, key=store_text) == sorted(texts)  # (byte order, as COLLATE "C")
    assert len({store_text(text) for text in texts}) == len(texts)
