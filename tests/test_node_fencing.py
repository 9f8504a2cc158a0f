"""Fencing by node generation (issue 16): a node taken over commits nothing more, however
late it wakes; a batch it had in flight commits before the takeover or not at all; started
again, it takes a new generation and writes as before. Real PostgreSQL, two stores on one
database standing for two nodes."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pg_server import ThrowawayPostgres
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from test_nodes import Cluster, cluster, redis_server, task_on  # noqa: F401 (fixtures)
from waiting import until

from minidevin.api import Runtime
from minidevin.nodes import Nodes
from minidevin.runtime import schemas
from minidevin.runtime.bus import NodeBus
from minidevin.runtime.errors import Unavailable
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import StoreError
from minidevin.runtime.storage.postgres import PostgresStore


@pytest.fixture
def database(postgres_server: ThrowawayPostgres) -> Iterator[str]:
    name = "fence_" + uuid.uuid4().hex
    url = postgres_server.create_database(name)
    yield url
    postgres_server.sync.execute(postgres_server.url(), f'DROP DATABASE "{name}" WITH (FORCE)')


async def seed_task(store: PostgresStore) -> str:
    user = await store.insert_user(f"{uuid.uuid4().hex}@example.com", "u", None)
    session = await store.insert_session(user.id, "s", "/tmp")
    task_id = str(uuid.uuid4())
    await store.insert_task(task_id, session.id, schemas.TaskRequest(description="d"), "m", 5,
                            utc_now())  # fmt: skip
    return task_id


def token(task_id: str, seq: int) -> Event:
    return Event(task_id, seq, "token", {"text": f"w{seq}"}, utc_now())


async def test_a_node_taken_over_commits_nothing_more(database: str) -> None:
    stale, taker = PostgresStore(database), PostgresStore(database)
    await stale.open()
    await taker.open()
    fenced: list[str] = []
    published: list[Event] = []
    stale.on_fenced = fenced.append
    stale.on_events_committed = published.extend
    try:
        assert await stale.fence_as("node1") == 1
        task_id = await seed_task(stale)
        stale.append(token(task_id, 1))
        await stale.flush()  # (its own generation: committed)
        assert [e.seq for e in published] == [1]

        await taker.fence_node("node1")  # the takeover
        stale.append(token(task_id, 2))
        with pytest.raises(StoreError, match="taken over"):
            await stale.write("UPDATE tasks SET iterations = 7 WHERE id = $1", task_id)
        assert len(fenced) == 1 and "node node1 was taken over" in fenced[0]
        with pytest.raises(StoreError, match="taken over"):  # and every write after it
            await stale.flush()
        assert len(fenced) == 1  # (told once)

        assert [e.seq for e in await taker.events_after(task_id, 0)] == [1]
        row = await taker.fetch_one("SELECT iterations FROM tasks WHERE id = $1", task_id)
        assert row == {"iterations": 0}
        assert [e.seq for e in published] == [1]  # the dropped event was never published
    finally:
        await stale.close()
        await taker.close()

    # started again (its lease taken anew): a new generation, and it writes again
    again = PostgresStore(database)
    await again.open()
    try:
        assert await again.fence_as("node1") == 3
        again.append(token(task_id, 2))
        await again.flush()
        assert [e.seq for e in await again.events_after(task_id, 0)] == [1, 2]
    finally:
        await again.close()


async def test_a_takeover_waits_for_a_batch_in_flight(database: str) -> None:
    """A batch of node1's writer that is in flight when the takeover comes (a slow statement
    in it) holds the takeover until it commits: it is wholly before the takeover; the next
    batch is refused."""
    stale, taker = PostgresStore(database), PostgresStore(database)
    await stale.open()
    await taker.open()
    watcher = await asyncpg.connect(database)
    stale.on_fenced = lambda why: None
    try:
        await stale.fence_as("node1")
        task_id = await seed_task(stale)
        stale.append(token(task_id, 1))
        slow = asyncio.create_task(stale.write("SELECT pg_sleep(1.5)"))  # (same batch)

        async def waiting(query: str) -> bool:
            return bool(await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = $1 "
                "AND query LIKE $2", *query.split("|"),
            ))  # fmt: skip

        await until(lambda: waiting("Timeout|SELECT pg_sleep%"), what="the batch in flight")
        takeover = asyncio.create_task(taker.fence_node("node1"))
        await until(lambda: waiting("Lock|UPDATE node_generations%"),
                    what="the takeover to wait for the batch's lock")  # fmt: skip
        await asyncio.wait_for(slow, 10)  # committed, in its own generation
        await asyncio.wait_for(takeover, 10)
        assert [e.seq for e in await taker.events_after(task_id, 0)] == [1]
        stale.append(token(task_id, 2))
        with pytest.raises(StoreError, match="taken over"):
            await stale.flush()
        assert [e.seq for e in await taker.events_after(task_id, 0)] == [1]
    finally:
        await watcher.close()
        await stale.close()
        await taker.close()


async def test_a_paused_node_that_was_taken_over_writes_nothing_when_it_wakes(
    cluster: Cluster,  # noqa: F811 (the fixture imported above)
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    """node1 is paused (SIGSTOP) while its task's command runs; its lease runs out and
    node2 takes the task over (`INTERRUPTED`, `failed`). Woken, node1 has the command's
    result to write: it exits 70 (fenced) and the task's log ends with node2's final
    status, with nothing of node1's after it."""
    first, second, _third = cluster(3, MINIDEVIN_LEASE_SECONDS="2")
    openai_server.script(
        [
            ScriptedTurn(text="Working.", tool_calls=[("terminal", {"command": "sleep 0.5"})]),
            ScriptedTurn(text="Done."),
        ]
    )
    auth, task = task_on(first, tmp_path / "work")
    url = first.env["MINIDEVIN_DATABASE_URL"]
    db = await asyncpg.connect(url)
    try:

        async def types() -> list[str]:
            rows = await db.fetch(
                "SELECT type FROM events WHERE task_id = $1 ORDER BY seq", task["id"]
            )
            return [row["type"] for row in rows]

        await until(lambda: _has(types(), "tool_call"), what="the command to start")
        first.signal(signal.SIGSTOP)
        try:
            await until(
                lambda: (
                    second.request("GET", f"/api/tasks/{task['id']}", None, auth)["status"]
                    == "failed"
                ),
                timeout=15,
                what="node2 to take the task over",
            )
            final = await db.fetchval("SELECT max(seq) FROM events WHERE task_id = $1", task["id"])
        finally:
            first.signal(signal.SIGCONT)
        assert first.wait(30) == 70  # fenced
        rows = await db.fetch(
            "SELECT seq, type, data FROM events WHERE task_id = $1 ORDER BY seq", task["id"]
        )
        assert rows[-1]["seq"] == final and rows[-1]["type"] == "status"
        assert '"failed"' in rows[-1]["data"]
        assert "tool_result" not in [row["type"] for row in rows]  # (node1's, refused)
    finally:
        await db.close()


async def _has(types: Any, wanted: str) -> bool:
    return wanted in await types


async def test_a_frozen_writer_does_not_hold_a_takeover_back(database: str) -> None:
    """A process frozen inside a batch (paused, partitioned) keeps its connection open, idle
    in its transaction, holding the generation's share lock: the server ends that
    transaction (the writer's `idle_in_transaction_session_timeout`), so the takeover goes
    on within seconds rather than for as long as the socket lives."""
    stale, taker = PostgresStore(database), PostgresStore(database)
    await stale.open()
    await taker.open()
    try:
        await stale.fence_as("node1")
        frozen = await stale._connect_writer()  # (the writer's own connection and settings)
        await frozen.execute("BEGIN")
        await frozen.fetchval(
            "SELECT generation FROM node_generations WHERE node = 'node1' FOR SHARE"
        )  # ... and the process freezes here
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(taker.fence_node("node1"), 15)
        assert loop.time() - started < 10
        frozen.terminate()
    finally:
        await stale.close()
        await taker.close()


async def test_a_node_runs_no_forwarded_command_before_it_is_fenced_and_recovered(
    tmp_path: Path,
    redis_server: Any,  # noqa: F811 (the fixture imported above)
    database: str,
) -> None:
    """Until its start-up is done (lease, generation, recovery), a node answers a command
    another node forwards with 503: run earlier, it would be neither fenced nor settled."""
    settings = Settings(
        database_url=database, redis_url=redis_server.url, node_id="node1",
        data_dir=tmp_path / "data", jwt_secret="fence-secret-" + "x" * 32,
    )  # fmt: skip
    starting = Runtime(settings)
    bus = NodeBus(redis_server.url, "node1", lambda events: None, starting_handler, print)
    nodes = Nodes(starting, bus)
    with pytest.raises(Unavailable, match="node node1 is starting"):
        await nodes.handle("stop_task", {"task_id": str(uuid.uuid4()), "reason": "r"})


async def starting_handler(op: str, args: dict[str, Any]) -> Any:
    return None
