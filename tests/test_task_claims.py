"""Each run of a task is taken by one node (issue 16): `claim_run` on real PostgreSQL, two
stores on one database standing for two nodes, each claim made from a thread as a session
actor makes it."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
from test_node_fencing import database, seed_task  # noqa: F401 (the fixture)

from minidevin.runtime.storage.postgres import PostgresStore


async def claim(store: PostgresStore, task_id: str) -> bool:
    return await asyncio.to_thread(store.claim_run, task_id)


async def nodes(url: str) -> tuple[PostgresStore, PostgresStore]:
    first, second = PostgresStore(url), PostgresStore(url)
    await first.open()
    await second.open()
    await first.fence_as("node1")
    await second.fence_as("node2")
    return first, second


async def test_a_run_is_taken_by_one_node_until_that_nodes_generation_moves_on(
    database: str,  # noqa: F811 (the fixture imported above)
) -> None:
    first, second = await nodes(database)
    try:
        task_id = await seed_task(first)
        assert await claim(first, task_id)
        assert await claim(first, task_id)  # (its own: a resume on the same node)
        assert not await claim(second, task_id)  # node1 is alive: the run is its
        await second.fence_node("node1")  # node1 taken over
        assert await claim(second, task_id)
        assert not await claim(first, task_id)  # a stale node starts nothing:
        assert not await claim(first, await seed_task(second))  # not even an unclaimed task
        again = PostgresStore(database)  # node1 started again: a new generation
        await again.open()
        try:
            assert await again.fence_as("node1") == 3
            assert not await claim(again, task_id)  # node2 is alive: the run is its
            await again.fence_node("node2")
            assert await claim(again, task_id)
            row = await again.fetch_one(
                "SELECT node, generation FROM task_claims WHERE task_id = $1", task_id
            )
            assert row == {"node": "node1", "generation": 3}
        finally:
            await again.close()
    finally:
        await first.close()
        await second.close()


async def test_a_claim_in_flight_elsewhere_is_skipped_not_waited_for(
    database: str,  # noqa: F811
) -> None:
    first, second = await nodes(database)
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
        await first.close()
        await second.close()


async def test_a_deleted_task_cannot_be_claimed_and_one_node_needs_no_claim(
    database: str,  # noqa: F811
) -> None:
    first, second = await nodes(database)
    alone = PostgresStore(database)  # (a single PostgreSQL node: no generation)
    await alone.open()
    try:
        assert not await claim(first, str(uuid.uuid4()))
        task_id = await seed_task(first)
        assert await claim(alone, task_id)
        assert await claim(alone, task_id)
    finally:
        await alone.close()
        await first.close()
        await second.close()
