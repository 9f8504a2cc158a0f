"""Fencing a node that was taken over, by its generation in the database (with nodes).

A node that takes its lease takes its node's next generation (`fence_as`); the
writer then commits a batch only while that generation is still the database's
(`postgres_batch.commit_batch` reads it under a share lock in the batch's own
transaction). A node taking another over first moves that node's generation on
(`fence_node`): the increment waits for a batch the other has in flight, and
every later one is refused (`Fenced`), however late the stale process wakes
from a pause or a partition. A fenced process drops what it holds (nobody was
told of it) and stops (`on_fenced`); started again, it takes a new generation.

A run of a task is taken the same way (`claim_run`): before a node starts a
task's next run, it claims the task's row in `task_claims` with `FOR UPDATE
SKIP LOCKED`, in one statement that also reads its own generation under a share
lock. The claim succeeds if the task is unclaimed, claimed by this very
generation, or claimed by a generation that has since moved on (a node
restarted or taken over); so a node that was taken over cannot start a run,
even one it had queued in memory, and each run is started by one node. A row
that a claim in flight holds is skipped, not waited for: the answer is then
"not yet" (a `StoreError`), and the session tries again.
"""

from __future__ import annotations

import asyncio

import asyncpg

from minidevin.runtime.storage.interface import StoreError
from minidevin.runtime.storage.postgres_engine import PostgresEngine

_CLAIM = """
UPDATE task_claims SET node = $2, generation = $3
WHERE task_id = (
    SELECT c.task_id FROM task_claims c
    WHERE c.task_id = $1 AND (
        c.node IS NULL
        OR (c.node = $2 AND c.generation = $3)
        OR c.generation IS DISTINCT FROM
            (SELECT g.generation FROM node_generations g WHERE g.node = c.node)
    )
    FOR UPDATE SKIP LOCKED
)
AND $3 = (SELECT generation FROM node_generations WHERE node = $2 FOR SHARE)
RETURNING task_id
"""
# (no claim: why — this node's generation is gone, or another current one holds the run;
# neither: the row was only locked by a claim in flight, and the answer is "not yet")
_WHY_NOT = """
SELECT
    $3 IS NOT DISTINCT FROM (SELECT generation FROM node_generations WHERE node = $2) AS current,
    c.node IS NOT NULL AND NOT (c.node = $2 AND c.generation = $3)
        AND c.generation IS NOT DISTINCT FROM
            (SELECT g.generation FROM node_generations g WHERE g.node = c.node) AS held
FROM task_claims c WHERE c.task_id = $1
"""


class PostgresFencing(PostgresEngine):
    """The node-generation statements of `PostgresStore`."""

    async def fence_as(self, node: str) -> int:
        """Take `node`'s next generation (this process holds the node's lease now); from
        here on every batch commits only while it is still the database's."""
        assert self._pool is not None, "store is not open"
        generation = await self._pool.fetchval(
            "INSERT INTO node_generations (node, generation) VALUES ($1, 1) ON CONFLICT (node) "
            "DO UPDATE SET generation = node_generations.generation + 1 RETURNING generation",
            node,
        )
        await self.flush()  # (what was queued before commits unfenced, as it was asked)
        self.fence = (node, int(generation))
        return int(generation)

    def claim_run(self, task_id: str, timeout: float = 5.0) -> bool:
        """From a session's thread, before it starts the task's next run: take the run (see
        the module); False if another node has it or this node was taken over. Without
        nodes (no generation) there is nothing to claim. Raises `StoreError` when the
        database cannot answer within `timeout` s (try again later)."""
        if self.fence is None:
            return True
        node, generation, loop = *self.fence, self._loop
        if loop is None or loop.is_closed():
            raise StoreError(f"the claim of task {task_id} failed: the store is not open")
        coroutine = self._claim(task_id, node, generation)
        try:
            claim = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError as exc:  # (its loop closed meanwhile)
            coroutine.close()
            raise StoreError(f"the claim of task {task_id} failed: {exc}") from exc
        try:
            return claim.result(timeout)
        except TimeoutError:
            claim.cancel()
            raise StoreError(f"no answer to the claim of task {task_id} in {timeout:g} s") from None
        except StoreError:
            raise
        except Exception as exc:  # (a connection lost or the pool closed on the way)
            raise StoreError(f"the claim of task {task_id} failed: {exc!r}") from exc

    async def _claim(self, task_id: str, node: str, generation: int) -> bool:
        assert self._pool is not None, "store is not open"
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO task_claims (task_id) VALUES ($1) ON CONFLICT DO NOTHING", task_id
                )
                if await conn.fetchval(_CLAIM, task_id, node, generation) is not None:
                    return True
                why = await conn.fetchrow(_WHY_NOT, task_id, node, generation)
        except asyncpg.ForeignKeyViolationError:
            return False  # (the task was deleted)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"the claim of task {task_id} failed: {exc}") from exc
        if why is None or not why["current"] or why["held"]:
            return False
        raise StoreError(f"the claim of task {task_id} is locked by a claim in flight")

    async def fence_node(self, node: str) -> None:
        """Another node's generation moves on (it is being taken over): once this returns,
        none of its batches can commit, even one it has in flight."""
        assert self._pool is not None, "store is not open"
        await self._pool.execute(
            "UPDATE node_generations SET generation = generation + 1 WHERE node = $1", node
        )
