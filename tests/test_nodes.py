"""Three `minidevin serve` nodes on one PostgreSQL database and one Redis (issue 16), all real
processes on loopback: any node answers any request, streams any task live (history then
live, no gap, no duplicate), and forwards what must reach a task's actors to its node."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from conftest import provider_env
from redis_server import RedisMissing, ThrowawayRedis
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from serve_process import ServeProcess
from waiting import fresh_minute, until

USER = {"email": "nodes@example.com", "password": "correct horse battery", "name": "N"}
FINAL = {"completed", "failed", "stopped"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    try:
        server = ThrowawayRedis(tmp_path / "redis")
    except RedisMissing as missing:
        pytest.skip(str(missing))
    server.start()
    yield server
    server.stop()


def node_env(
    postgres_url: str, redis_url: str, node: str, openai_server: ScriptedOpenAIServer
) -> dict[str, str]:
    return {
        **provider_env(openai_server),
        "MINIDEVIN_DATABASE_URL": postgres_url,
        "MINIDEVIN_REDIS_URL": redis_url,
        "MINIDEVIN_NODE_ID": node,
        "MINIDEVIN_JWT_SECRET": "nodes-share-this-secret-" + "x" * 32,
        "MINIDEVIN_SECRETS_KEY": base64.urlsafe_b64encode(b"k" * 32).decode(),
        "MINIDEVIN_SANDBOX": "off",
    }


Cluster = Callable[..., list[ServeProcess]]


@pytest.fixture
def cluster(
    tmp_path: Path,
    postgres_server: Any,
    redis_server: ThrowawayRedis,
    openai_server: ScriptedOpenAIServer,
) -> Iterator[Cluster]:
    """Start `count` nodes on one fresh database (with `extra` settings), closed at the end."""
    started: list[ServeProcess] = []

    def start(count: int = 3, **extra: str) -> list[ServeProcess]:
        url = postgres_server.create_database(f"nodes_{os.getpid()}_{time.time_ns() % 10**9}")
        for n in range(1, count + 1):
            env = {**node_env(url, redis_server.url, f"node{n}", openai_server), **extra}
            started.append(ServeProcess(tmp_path / f"data{n}", env))
        return started

    try:
        yield start
    finally:
        for node in started:
            node.close()


@pytest.fixture
def nodes(cluster: Cluster) -> list[ServeProcess]:
    return cluster(3)


def login(node: ServeProcess) -> dict[str, str]:
    token = node.request("POST", "/api/auth/login", USER)["access_token"]
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def task_on(
    node: ServeProcess, work: Path, **session: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """A new user's task in a session (with the `session` fields) created on `node`: (auth,
    task)."""
    node.request("POST", "/api/auth/register", USER)
    auth = login(node)
    work.mkdir()
    body = {"name": "s", "working_directory": str(work), **session}
    session = node.request("POST", "/api/sessions", body, auth)
    task = node.request(
        "POST", f"/api/sessions/{session['id']}/tasks", {"description": "wait"}, auth
    )
    return auth, task


async def collect(session: aiohttp.ClientSession, url: str, into: list[dict[str, Any]]) -> None:
    async with session.ws_connect(url) as ws:
        async for message in ws:
            into.append(json.loads(message.data))
            if into[-1].get("type") == "status" and into[-1].get("status") in FINAL:
                return


async def test_a_task_created_on_one_node_is_watched_on_two_and_stopped_through_a_third(
    nodes: list[ServeProcess], openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    first, second, third = nodes
    openai_server.script(
        [ScriptedTurn(text="Working.", tool_calls=[("terminal", {"command": "sleep 60"})])]
    )
    first.request("POST", "/api/auth/register", USER)
    auth = login(second)  # a user registered on node 1 logs in on node 2
    work = tmp_path / "work"
    work.mkdir()
    body = {"name": "s", "working_directory": str(work)}
    session = first.request("POST", "/api/sessions", body, auth)  # runs on node 1
    # created through node 2: the task still runs on node 1, where its directory is
    task = second.request(
        "POST", f"/api/sessions/{session['id']}/tasks", {"description": "wait"}, auth
    )
    token = auth["Authorization"].split()[1]
    seen2: list[dict[str, Any]] = []
    seen3: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as client:
        import asyncio

        watchers = [
            asyncio.create_task(collect(client, f"{n.url.replace('http', 'ws')}/ws/tasks/"
                                        f"{task['id']}?token={token}", seen))
            for n, seen in ((second, seen2), (third, seen3))
        ]  # fmt: skip
        await until(
            lambda: (
                any(m.get("type") == "tool_call" for m in seen2)
                and any(m.get("type") == "tool_call" for m in seen3)
            ),
            what="both watchers to see the command start",
        )
        running = second.request("GET", f"/api/tasks/{task['id']}", None, auth)
        assert running["status"] == "running" and running["node_id"] == "node1"
        started = time.perf_counter()
        stopped = third.request("POST", f"/api/tasks/{task['id']}/stop", None, auth)
        stop_seconds = time.perf_counter() - started
        await asyncio.wait_for(asyncio.gather(*watchers), 30)
    assert stopped["status"] == "stopped"
    for seen in (seen2, seen3):
        seqs = [m["seq"] for m in seen]
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # no gap, no duplicate
        assert seen[-1]["status"] == "stopped"
    assert seen2 == seen3
    for node in nodes:  # (node 2 read it running before: nothing stale is kept)
        assert node.request("GET", f"/api/tasks/{task['id']}", None, auth)["status"] == "stopped"
    for n, node in enumerate(nodes, 1):
        health = node.request("GET", "/health")["node"]
        assert health["id"] == f"node{n}" and health["backend"] == "postgresql"
    print(f"\nstop through node 3 of a task on node 1: {stop_seconds * 1000:.0f} ms")
    assert stop_seconds < 1.0


async def test_rate_limits_count_across_nodes(cluster: Cluster) -> None:
    nodes = cluster(3, MINIDEVIN_RATE_LIMIT_AUTHENTICATED="9")
    await fresh_minute(15)  # (the registration and login count too)
    nodes[0].request("POST", "/api/auth/register", USER)
    auth = login(nodes[1])
    for node in nodes * 3:  # nine requests, three on each node
        node.request("GET", "/api/sessions", None, auth)
    for node in nodes:  # the tenth, wherever it goes, is over the one limit
        with pytest.raises(urllib.error.HTTPError) as refused:
            node.request("GET", "/api/sessions", None, auth)
        assert refused.value.code == 429


async def test_a_killed_nodes_task_is_taken_over_within_the_lease(
    cluster: Cluster, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    import asyncio

    lease = 2.0
    first, second, _third = cluster(
        3, MINIDEVIN_LEASE_SECONDS=str(lease), MINIDEVIN_RESUME_INTERRUPTED="true"
    )
    openai_server.script(
        [
            ScriptedTurn(text="Working.", tool_calls=[("terminal", {"command": "sleep 60"})]),
            ScriptedTurn(text="Done after the takeover."),
        ]
    )
    auth, task = task_on(first, tmp_path / "work")
    token = auth["Authorization"].split()[1]
    seen: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as client:
        url = f"{second.url.replace('http', 'ws')}/ws/tasks/{task['id']}?token={token}"
        watcher = asyncio.create_task(collect(client, url, seen))
        await until(lambda: any(m.get("type") == "tool_call" for m in seen), what="the command")
        before_kill = list(seen)
        first.close()  # kill -9 of the node running the task
        killed = time.perf_counter()
        await asyncio.wait_for(watcher, 30)
    taken_over = time.perf_counter() - killed
    seqs = [m["seq"] for m in seen]
    assert seqs == list(range(1, len(seqs) + 1))  # nothing acknowledged lost, no duplicate
    assert seen[: len(before_kill)] == before_kill
    assert any(m.get("type") == "error" and m.get("code") == "INTERRUPTED" for m in seen)
    assert seen[-1]["status"] == "failed"
    print(f"\ntaken over {taken_over:.2f} s after kill -9 (lease {lease:.0f} s)")
    assert taken_over < lease + 2.5
    # resumed on a live node, where it finishes
    done = await until(
        lambda: (
            (d := second.request("GET", f"/api/tasks/{task['id']}", None, auth))["status"]
            == "completed"
            and d
        ),
        timeout=20,
        what="the resumed task to complete on another node",
    )
    assert done["node_id"] in ("node2", "node3")


async def test_two_hundred_tasks_over_three_nodes_each_stream_whole_and_once(
    cluster: Cluster, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    import asyncio

    nodes = cluster(
        3,
        MINIDEVIN_MAX_CONCURRENT_TASKS="100",
        MINIDEVIN_MAX_WEBSOCKETS_PER_USER="250",
        MINIDEVIN_MAX_CONNECTIONS_PER_ADDRESS="1000",  # (every client here is 127.0.0.1)
    )
    count = 200
    openai_server.script([ScriptedTurn(text=f"Done {n}.") for n in range(count)])
    nodes[0].request("POST", "/api/auth/register", USER)
    auth = login(nodes[0])
    token = auth["Authorization"].split()[1]
    streams: dict[str, list[dict[str, Any]]] = {}
    async with aiohttp.ClientSession(headers=auth) as client:

        async def one(n: int) -> None:
            owner, creator, watcher = (nodes[(n + k) % 3] for k in range(3))
            work = tmp_path / f"w{n}"
            work.mkdir()
            body = {"name": f"s{n}", "working_directory": str(work)}
            async with client.post(f"{owner.url}/api/sessions", json=body) as response:
                session = await response.json()
            url = f"{creator.url}/api/sessions/{session['id']}/tasks"  # (forwarded to owner)
            async with client.post(url, json={"description": f"task {n}"}) as response:
                assert response.status == 201, await response.text()
                task = await response.json()
            seen = streams.setdefault(task["id"], [])
            ws_url = f"{watcher.url.replace('http', 'ws')}/ws/tasks/{task['id']}?token={token}"
            await collect(client, ws_url, seen)

        await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(count))), 120)
        assert len(streams) == count
        for task_id, seen in streams.items():
            seqs = [m["seq"] for m in seen]
            assert seqs == list(range(1, len(seqs) + 1)), (task_id, seqs)  # once, in order
            assert seen[-1]["status"] == "completed", seen[-1]
            replay: list[dict[str, Any]] = []  # the log, read again through another node
            await collect(client, f"{nodes[2].url.replace('http', 'ws')}/ws/tasks/{task_id}"
                          f"?token={token}", replay)  # fmt: skip
            assert replay == seen


async def test_a_session_is_pinned_to_the_node_its_body_names(
    nodes: list[ServeProcess], openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    first, second, _ = nodes
    openai_server.script([ScriptedTurn(text="Done.")])
    first.request("POST", "/api/auth/register", USER)
    auth = login(first)
    work = tmp_path / "pinned"
    work.mkdir()
    body = {"name": "p", "working_directory": str(work), "node": "node3"}
    session = second.request("POST", "/api/sessions", body, auth)  # created by node 3
    task = first.request("POST", f"/api/sessions/{session['id']}/tasks", {"description": "t"}, auth)
    detail = second.request("GET", f"/api/tasks/{task['id']}", None, auth)
    assert detail["node_id"] == "node3"
    with pytest.raises(urllib.error.HTTPError) as refused:
        second.request("POST", "/api/sessions", {**body, "node": "node9"}, auth)
    assert refused.value.code == 422
    assert json.loads(refused.value.read())["code"] == "VALIDATION_ERROR"


async def test_nodes_ride_out_a_redis_restart(
    cluster: Cluster,
    redis_server: ThrowawayRedis,
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
) -> None:
    """Redis restarted (everything it held gone): no node stops, the placement (the
    database's) holds, a stream on another node goes on to the end, a stop is forwarded."""
    import asyncio

    first, second = cluster(2, MINIDEVIN_LEASE_SECONDS="2")
    openai_server.script(
        [ScriptedTurn(text="Working.", tool_calls=[("terminal", {"command": "sleep 60"})])]
    )
    auth, task = task_on(first, tmp_path / "work")
    token = auth["Authorization"].split()[1]
    seen: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as client:
        url = f"{second.url.replace('http', 'ws')}/ws/tasks/{task['id']}?token={token}"
        watcher = asyncio.create_task(collect(client, url, seen))
        await until(lambda: any(m.get("type") == "tool_call" for m in seen), what="the command")
        redis_server.stop()  # (everything it held is lost)

        def stop() -> int:
            try:
                second.request("POST", f"/api/tasks/{task['id']}/stop", None, auth)
            except urllib.error.HTTPError as refused:
                return refused.code
            return 200

        assert stop() == 503  # (the session's node cannot be reached: said so)
        await until(
            lambda: any(line.get("event") == "node_bus_lost" for line in second.logs()),
            what="node 2 to notice",
        )
        redis_server.start()
        await until(lambda: stop() == 200, timeout=15, what="a stop forwarded once Redis is back")
        await asyncio.wait_for(watcher, 15)
        probe = redis.Redis.from_url(redis_server.url)
        try:  # both leases taken again (not fenced for a lease Redis forgot)
            await until(
                lambda: probe.exists("minidevin.alive.node1", "minidevin.alive.node2") == 2,
                timeout=10,
                what="both leases back",
            )
        finally:
            probe.close()
    seqs = [m["seq"] for m in seen]
    assert seqs == list(range(1, len(seqs) + 1)) and seen[-1]["status"] == "stopped"
    for node in (first, second):
        assert node.process.poll() is None  # neither fenced itself
        assert node.request("GET", "/health")["status"] == "healthy"


def test_a_revoked_key_and_a_new_password_hold_on_every_node_at_once(
    nodes: list[ServeProcess],
) -> None:
    first, second, third = nodes
    first.request("POST", "/api/auth/register", USER)
    auth = login(first)
    key = first.request("POST", "/api/auth/api-keys", {"name": "k"}, auth)
    by_key = {"X-API-Key": key["key"]}
    assert second.request("GET", "/api/sessions", None, by_key) == []  # (known to node 2)
    old = login(third)
    assert third.request("GET", "/api/sessions", None, old) == []  # (and node 3's token)
    first.request("DELETE", f"/api/auth/api-keys/{key['id']}", None, auth)
    body = {"current_password": USER["password"], "new_password": "another horse battery"}
    first.request("POST", "/api/auth/password", body, auth)
    for node, headers in ((second, by_key), (third, old)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            node.request("GET", "/api/sessions", None, headers)
        assert refused.value.code == 401
