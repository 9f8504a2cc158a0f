"""Leases against a real Redis and PostgreSQL: taking a lease and taking over are each one step,
so a node starting again and a node taking it over never both win; a dead node is fenced
and taken over once, not again every round; a closing node waits for a takeover it has under
way before it counts what it hands over. Interleavings are made by holding one client's
command until the other client acted (no timing)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis_server import ThrowawayRedis
from test_node_fencing import database  # noqa: F401 (fixture)
from test_nodes import redis_server  # noqa: F401 (fixture)
from waiting import until

from minidevin.api import Runtime
from minidevin.lease_keys import alive_key, take_lease, take_takeover, takeover_key
from minidevin.leases import Leases
from minidevin.nodes import NODES, Nodes
from minidevin.runtime.bus import NodeBus
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage.postgres import PostgresStore

MILLIS = 60_000


class HeldClient(aioredis.Redis):
    """A real Redis client whose first write naming `key` (a SET, or a script given it)
    waits until `release` is set: another client acts in between."""

    def hold(self, key: str) -> None:
        self.key, self.reached, self.release = key, False, asyncio.Event()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        command = str(args[0]).upper()
        if not self.reached and command in ("SET", "EVAL", "EVALSHA") and self.key in args[1:]:
            self.reached = True
            await self.release.wait()
        return await super().execute_command(*args, **options)


@pytest.fixture
async def clients(
    redis_server: ThrowawayRedis,  # noqa: F811 (the fixture imported above)
) -> AsyncIterator[tuple[HeldClient, aioredis.Redis]]:
    held = HeldClient.from_url(redis_server.url)
    other = aioredis.from_url(redis_server.url)
    yield held, other
    await held.aclose()
    await other.aclose()


async def test_a_takeover_between_a_lease_check_and_its_set_wins_alone(
    clients: tuple[HeldClient, aioredis.Redis],
) -> None:
    """Node A starts again while B takes it over: B's takeover comes in while A's lease is
    being taken; A does not get its lease too (it waits for the takeover to end)."""
    held, other = clients
    held.hold(alive_key("nodeA"))
    starting = asyncio.create_task(take_lease(held, "nodeA", "token-a", MILLIS))
    await until(lambda: held.reached, what="node A to be taking its lease")
    taken = await take_takeover(other, "nodeA", "nodeB", MILLIS)
    held.release.set()
    assert (taken, await starting) == (1, False)
    assert await other.get(alive_key("nodeA")) is None


async def test_a_lease_between_a_takeover_check_and_its_set_wins_alone(
    clients: tuple[HeldClient, aioredis.Redis],
) -> None:
    """B takes node A over while A starts again: A's lease comes in while B's takeover is
    being taken; B does not get the takeover too."""
    held, other = clients
    held.hold(takeover_key("nodeA"))
    taking = asyncio.create_task(take_takeover(held, "nodeA", "nodeB", MILLIS))
    await until(lambda: held.reached, what="node B to be taking node A over")
    leased = await take_lease(other, "nodeA", "token-a", MILLIS)
    held.release.set()
    assert (leased, await taking) == (True, -1)
    assert await other.get(takeover_key("nodeA")) is None


@pytest.fixture
async def leases(
    tmp_path: Path,
    redis_server: ThrowawayRedis,  # noqa: F811 (the fixture imported above)
    database: str,  # noqa: F811 (the fixture imported above)
) -> AsyncIterator[Leases]:
    """Node B's leases (not started: the tests drive them), its runtime on the database."""
    settings = Settings(
        database_url=database, node_id="nodeB", data_dir=tmp_path / "data", lease_seconds=60,
        jwt_secret="lease-races-" + "x" * 32, allow_unsandboxed_multiuser=True,
    )  # fmt: skip
    async with Runtime(settings) as runtime:
        bus = NodeBus(redis_server.url, "nodeB", lambda events: None, refused, lambda ids: None)
        await bus.start()
        try:
            yield Leases(runtime, Nodes(runtime, bus))
        finally:
            await bus.close()


async def refused(op: str, args: dict[str, Any]) -> Any:
    raise AssertionError(f"no command is sent to node B here: {op}")


async def generation(database: str, node: str) -> int:  # noqa: F811 (a parameter)
    conn = await asyncpg.connect(database)
    try:
        return int(await conn.fetchval("SELECT generation FROM node_generations WHERE node = $1",
                                       node))  # fmt: skip
    finally:
        await conn.close()


async def session_on(leases: Leases, node: str, directory: str) -> tuple[str, str, str]:
    """A new user's session on `node` at `directory` (claimed if it exists): (session id,
    user id, path)."""
    store = leases.runtime.store
    user = await store.insert_user(f"{uuid.uuid4().hex}@example.com", "u", None)
    if Path(directory).is_dir():
        directory = str((await leases.runtime.workspaces.claim(user.id, directory)).path)
    session = await store.insert_session(user.id, "s", directory, node=node)
    return session.id, user.id, directory


async def test_a_dead_node_is_fenced_and_taken_over_once(
    leases: Leases,
    database: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """Node X is dead; its sessions' directories are nowhere, or claimed with another owner:
    they stay placed on X. The watch fences X and takes it over once, not every round after;
    once one of them can be taken here, X is taken over again, not fenced again; once X has
    held its lease again and lost it, it is fenced and taken over anew."""
    dead = PostgresStore(database)
    await dead.open()
    try:
        await dead.fence_as("nodeX")  # (its generation 1)
    finally:
        await dead.close()
    store, client = leases.runtime.store, leases.nodes.bus.client
    await session_on(leases, "nodeX", "/nowhere/to/be/seen")
    (tmp_path / "work").mkdir()
    later, user, path = await session_on(leases, "nodeX", str(tmp_path / "work"))
    claim = await store.workspace_claim(path)
    assert claim is not None
    identity, owner = (int(claim["st_dev"]), int(claim["st_ino"])), (int(claim["st_uid"]), 0)
    await store.put_workspace_claim(path, user, identity, (owner[0] + 1, owner[1]))
    await client.sadd(NODES, "nodeX")
    for _ in range(3):
        await leases.check_others()
    assert leases.taken_over == ["nodeX"]
    assert await generation(database, "nodeX") == 2
    assert await client.sismember(NODES, "nodeX")  # (its sessions are left: still watched)
    await store.put_workspace_claim(path, user, identity, (owner[0], int(claim["st_gid"])))
    await leases.check_others()  # (one of them is seen here now)
    assert leases.taken_over == ["nodeX", "nodeX"]
    assert await generation(database, "nodeX") == 2
    assert [row["id"] for row in await store.sessions_on("nodeB")] == [later]
    assert await take_lease(client, "nodeX", "token-x", MILLIS)  # started again...
    await client.delete(alive_key("nodeX"))  # ...and its lease lost
    await leases.check_others()
    await leases.check_others()
    assert leases.taken_over == ["nodeX", "nodeX", "nodeX"]
    assert await generation(database, "nodeX") == 3


async def test_a_closing_node_waits_for_a_takeover_under_way(
    leases: Leases, tmp_path: Path
) -> None:
    """Node C shut down and asked node B to take it over; B starts closing while it waits
    for another node's takeover of C to end. B's shutdown waits until C's session is on B
    (then B counts it among its own to hand over)."""
    work = tmp_path / "work"
    work.mkdir()
    session, _, _ = await session_on(leases, "nodeC", str(work))
    client = leases.nodes.bus.client
    await client.sadd(NODES, "nodeC")
    await client.set(takeover_key("nodeC"), "nodeD")  # (another node's, under way)
    order: list[str] = []
    taking = asyncio.create_task(leases.take_over_now("nodeC"))
    taking.add_done_callback(lambda _: order.append("take_over_now"))
    await until(lambda: leases.takeovers_under_way == 1, what="the takeover to wait")
    stopping = asyncio.create_task(leases.stop_here({}))
    stopping.add_done_callback(lambda _: order.append("stop_here"))
    await until(
        lambda: stopping.done() or leases.waiting_for_takeovers, what="the shutdown to wait"
    )
    await client.delete(takeover_key("nodeC"))  # (the other node's takeover ends)
    assert await taking == 0
    await stopping
    assert order == ["take_over_now", "stop_here"]
    assert [row["id"] for row in await leases.runtime.store.sessions_on("nodeB")] == [session]
    with pytest.raises(Exception, match="shutting down"):
        await leases.take_over_now("nodeC")
