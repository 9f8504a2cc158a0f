"""Each run of a task is taken by one node (issue 16): `claim_run` on real PostgreSQL, two
stores on one database standing for two nodes, each claim made from a thread as a session
actor makes it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from test_node_fencing import database, seed_task  # noqa: F401 (the fixture)

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


async def test_a_claim_in_flight_elsewhere_is_skipped_not_waited_for(
    database: str,  # noqa: F811
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = nodes
    other = await asyncpg.connect(database)
    try:
        task_id = await seed_task(first)
        assert await claim(first, task_id)
        await second.fence_node("node1")
        # another claimer holds the row in an open transaction
        holder = other.transaction()
        await holder.start()
        await other.execute("SELECT 1 FROM task_claims WHERE task_id = $1 FOR UPDATE", task_id)
        started = time.monotonic()
        assert not await claim(second, task_id)
        assert time.monotonic() - started < 0.5  # skipped at once: not its lock to wait on
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
