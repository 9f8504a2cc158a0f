"""Each run of a task is taken by one node (issue 16): `claim_run` on real PostgreSQL, two
stores on one database standing for two nodes, each claim made from a thread as a session
actor makes it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from test_node_fencing import database, seed_task  # noqa: F401 (the fixture)
from test_nodes import Cluster, cluster, redis_server, task_on  # noqa: F401 (fixtures)
from waiting import until

from minidevin.runtime.storage import StoreError
from minidevin.runtime.storage.postgres import PostgresStore


async def claim(store: PostgresStore, task_id: str) -> bool:
    return await asyncio.to_thread(store.claim_run, task_id)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def nodes(database: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:  # noqa: F811
    """Two nodes' stores on one database: node1 and node2, each at its first generation."""
    first, second = PostgresStore(database), PostgresStore(database)
    await first.open()
    await second.open()
    try:
        await first.fence_as("node1")
        await second.fence_as("node2")
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_a_run_is_taken_by_one_node_until_that_nodes_generation_moves_on(
    database: str,  # noqa: F811 (the fixture imported above)
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = nodes
    task_id = await seed_task(first)
    assert await claim(first, task_id)
    assert await claim(first, task_id)  # (its own: a resume on the same node)
    assert not await claim(second, task_id)  # node1 is alive: the run is its
    await second.fence_node("node1")  # node1 taken over
    assert await claim(second, task_id)
    assert not await claim(first, task_id)  # a stale node starts nothing:
    assert not await claim(first, await seed_task(second))  # not even an unclaimed task
    async with opened(database) as again:  # node1 started again: a new generation
        assert await again.fence_as("node1") == 3
        assert not await claim(again, task_id)  # node2 is alive: the run is its
        await again.fence_node("node2")
        assert await claim(again, task_id)
        row = await again.fetch_one(
            "SELECT node, generation FROM task_claims WHERE task_id = $1", task_id
        )
        assert row == {"node": "node1", "generation": 3}


async def test_a_claim_in_flight_is_skipped_not_waited_for_and_answered_not_yet(
    database: str,  # noqa: F811
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = nodes
    other = await asyncpg.connect(database)
    try:
        task_id = await seed_task(first)
        assert await claim(first, task_id)
        # another claimer holds the row in an open transaction
        holder = other.transaction()
        await holder.start()
        await other.execute("SELECT 1 FROM task_claims WHERE task_id = $1 FOR UPDATE", task_id)
        started = time.monotonic()
        assert not await claim(second, task_id)  # node1's, and node1 is current: a no
        await second.fence_node("node1")
        with pytest.raises(StoreError, match="locked by a claim in flight"):
            await claim(second, task_id)  # its own once the lock goes: not yet, not no
        assert time.monotonic() - started < 3.0  # skipped: waiting would take the 5 s timeout
        await holder.rollback()
        assert await claim(second, task_id)
    finally:
        await other.close()


async def test_a_deleted_task_cannot_be_claimed_and_one_node_needs_no_claim(
    database: str,  # noqa: F811
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    first, _ = nodes
    assert not await claim(first, str(uuid.uuid4()))
    task_id = await seed_task(first)
    async with opened(database) as alone:  # (a single PostgreSQL node: no generation)
        assert await claim(alone, task_id)
        assert await claim(alone, task_id)


async def test_a_session_waits_out_a_claim_in_flight_then_starts_the_task(
    cluster: Cluster,  # noqa: F811
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    """The claim row of a session's next task is locked when its turn comes: the node
    keeps the task first in line (no start, not dropped) and starts it once it may."""
    (node,) = cluster(1)
    openai_server.script([ScriptedTurn(text="Working", stall=True), finish("next done")])
    auth, running = task_on(node, tmp_path / "work")
    (session,) = node.request("GET", "/api/sessions", None, auth)
    tasks_url = f"/api/sessions/{session['id']}/tasks"
    queued = node.request("POST", tasks_url, {"description": "next"}, auth)
    assert queued["status"] == "queued"
    await openai_server.wait_for_requests(1)  # the first task is mid-turn (its stall)
    db = await asyncpg.connect(node.env["MINIDEVIN_DATABASE_URL"])
    try:
        await db.execute("INSERT INTO task_claims (task_id) VALUES ($1)", queued["id"])
        holder = db.transaction()
        await holder.start()
        await db.execute("SELECT 1 FROM task_claims WHERE task_id = $1 FOR UPDATE", queued["id"])
        held = time.monotonic()
        node.request("POST", f"/api/tasks/{running['id']}/stop", None, auth)
        await until(
            lambda: any(line.get("event") == "task_claim_failed" for line in node.logs()),
            what="the start refused for now",
        )
        assert node.request("GET", f"/api/tasks/{queued['id']}", None, auth)["status"] == "queued"
        await holder.rollback()
        held = time.monotonic() - held
        status = ("GET", f"/api/tasks/{queued['id']}", None, auth)
        await until(
            lambda: (
                node.request("GET", f"/api/tasks/{queued['id']}", None, auth)["status"]
                == "completed"
            ),
            what=lambda: f"the task to finish once its claim was free: {node.request(*status)}",
        )
        tries = [line for line in node.logs() if line.get("event") == "task_claim_failed"]
        assert len(tries) <= held + 2  # (one try a second while it was held, not one a message)
    finally:
        await db.close()
