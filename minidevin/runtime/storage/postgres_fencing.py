"""Fencing a node that was taken over, by its generation in the database (with nodes).

A node that takes its lease takes its node's next generation (`fence_as`); the
writer then commits a batch only while that generation is still the database's
(`postgres_batch.commit_batch` reads it under a share lock in the batch's own
transaction). A node taking another over first moves that node's generation on
(`fence_node`): the increment waits for a batch the other has in flight, and
every later one is refused (`Fenced`), however late the stale process wakes
from a pause or a partition. A fenced process drops what it holds (nobody was
told of it) and stops (`on_fenced`); started again, it takes a new generation.
"""

from __future__ import annotations

from minidevin.runtime.storage.postgres_engine import PostgresEngine


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

    async def fence_node(self, node: str) -> None:
        """Another node's generation moves on (it is being taken over): once this returns,
        none of its batches can commit, even one it has in flight."""
        assert self._pool is not None, "store is not open"
        await self._pool.execute(
            "UPDATE node_generations SET generation = generation + 1 WHERE node = $1", node
        )
