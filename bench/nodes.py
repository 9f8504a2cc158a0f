"""Issue 16: one SQLite node against three and four nodes on PostgreSQL and Redis.

Every node is a real `minidevin serve` process on loopback; PostgreSQL and
redis-server are throwaway ones (the tests' helpers), the model a scripted
OpenAI-compatible server streaming one word per delta. Per configuration:

- REST reads: 20 clients polling `GET /api/tasks/{id}` spread over the nodes
  for 3 s: requests per second, p50/p99 latency;
- task start: `POST` of a task (through another node than its session's) to
  its `running` status, p50/p99 of 30 tasks;
- token to client: for 20 tasks streaming 300 words each (coalesced into a few
  token events each), watched on another node than theirs, each token event's
  arrival minus its timestamp, p50/p99;
- takeover (multi-node): `kill -9` of the node running a long command to the
  `INTERRUPTED` error seen on another node, with 3-second leases.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import REPO, Config, Row, percentile

sys.path.insert(0, str(REPO / "tests"))  # (the tests' throwaway servers, reused)

USER = {"email": "bench@example.com", "password": "correct horse battery", "name": "B"}
WORDS = " ".join(f"w{n}" for n in range(300))


async def run(cfg: Config) -> list[Row]:
    from pg_server import PostgresMissing, ThrowawayPostgres
    from redis_server import RedisMissing, ThrowawayRedis
    from scripted_provider import ScriptedOpenAIServer

    try:
        postgres, redis = ThrowawayPostgres(), ThrowawayRedis(cfg.workdir / "redis")
    except (PostgresMissing, RedisMissing) as missing:
        return [Row("nodes", "skipped", float("nan"), "", notes=str(missing))]
    postgres.start()
    redis.start()
    rows: list[Row] = []
    try:
        with ScriptedOpenAIServer() as model:
            for label, count in (("1 SQLite node", 1), ("3 nodes", 3), ("4 nodes", 4)):
                url = None if count == 1 else postgres.create_database(f"bench{count}")
                figures = await measure(cfg, model, count, url, redis.url, label)
                rows += [Row("nodes", f"{label}: {name}", value, unit, notes=note)
                         for name, value, unit, note in figures]  # fmt: skip
    finally:
        redis.stop()
        postgres.stop()
    return rows


def _env(model: Any, database: str | None, redis: str, node: str, lease: float) -> dict[str, str]:
    env = {
        "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": model.base_url,
        "MINIDEVIN_NODE_ID": node, "MINIDEVIN_SANDBOX": "off",
        "MINIDEVIN_JWT_SECRET": "bench-nodes-" + "x" * 40,
        "MINIDEVIN_SECRETS_KEY": base64.urlsafe_b64encode(b"b" * 32).decode(),
        "MINIDEVIN_MAX_CONCURRENT_TASKS": "100", "MINIDEVIN_MAX_WEBSOCKETS_PER_USER": "500",
        "MINIDEVIN_LEASE_SECONDS": str(lease), "MINIDEVIN_LOG_LEVEL": "warning",
    }  # fmt: skip
    if database is not None:
        env |= {"MINIDEVIN_DATABASE_URL": database, "MINIDEVIN_REDIS_URL": redis}
    return env


async def measure(
    cfg: Config, model: Any, count: int, database: str | None, redis: str, label: str
) -> list[tuple[str, float, str, str]]:
    from scripted_provider import ScriptedTurn
    from serve_process import ServeProcess

    base = cfg.workdir / f"nodes-{count}"
    base.mkdir(parents=True)
    nodes = [
        ServeProcess(base / f"data{n}", _env(model, database, redis, f"n{n}", 3.0))
        for n in range(count)
    ]
    try:
        nodes[0].request("POST", "/api/auth/register", USER)
        token = nodes[0].request("POST", "/api/auth/login", USER)["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=auth) as client:
            sessions = [await _session(client, nodes[n % count], base / f"w{n}") for n in range(8)]
            # task start, through another node than the session's
            model.script([ScriptedTurn(text="Done.") for _ in range(30)])
            starts = []
            for n in range(30):
                owner = n % len(sessions)
                via = nodes[(owner + 1) % count]
                started = time.time()
                task = await _post(client, f"{via.url}/api/sessions/{sessions[owner]}/tasks")
                running = await _until_status(client, nodes[(owner + 2) % count], token, task)
                starts.append(running - started)
            # token to client: watched on another node than the session's
            model.script([ScriptedTurn(text=WORDS) for _ in range(20)])
            lags: list[float] = []
            for n in range(20):
                owner = n % len(sessions)
                task = await _post(client, f"{nodes[owner % count].url}/api/sessions/"
                                   f"{sessions[owner]}/tasks")  # fmt: skip
                lags += await _token_lags(client, nodes[(owner + 1) % count], token, task)
            # REST reads spread over the nodes
            served, latencies = await _reads(client, nodes, task)
            figures = [
                ("REST reads", served / 3.0, "req/s",
                 f"20 clients, 3 s; p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                 f"p99 {percentile(latencies, 99) * 1000:.1f} ms"),
                ("task start p99", percentile(starts, 99) * 1000, "ms",
                 f"POST to running, 30 tasks; p50 {percentile(starts, 50) * 1000:.0f} ms"),
                ("token to client p99", percentile(lags, 99) * 1000, "ms",
                 f"{len(lags)} token events; p50 {percentile(lags, 50) * 1000:.1f} ms"),
            ]  # fmt: skip
            if count > 1:
                figures.append(await _takeover(client, nodes, sessions, token, model))
            return figures
    finally:
        for node in nodes:
            node.close()


async def _session(client: aiohttp.ClientSession, node: Any, work: Path) -> str:
    work.mkdir(parents=True)
    body = {"name": work.name, "working_directory": str(work)}
    async with client.post(f"{node.url}/api/sessions", json=body) as response:
        return str((await response.json())["id"])


async def _post(client: aiohttp.ClientSession, url: str, text: str = "bench") -> str:
    async with client.post(url, json={"description": text}) as response:
        return str((await response.json())["id"])


def _stamp(message: dict[str, Any]) -> float:
    return datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00")).timestamp()


async def _stream(client: aiohttp.ClientSession, node: Any, token: str, task: str) -> Any:
    url = f"{node.url.replace('http', 'ws')}/ws/tasks/{task}?token={token}"
    async with client.ws_connect(url) as ws:
        async for message in ws:
            yield json.loads(message.data), time.time()


async def _until_status(client: aiohttp.ClientSession, node: Any, token: str, task: str) -> float:
    async for message, _ in _stream(client, node, token, task):
        if message.get("type") == "status" and message.get("status") == "running":
            return _stamp(message)
    raise RuntimeError("no running status")


async def _token_lags(
    client: aiohttp.ClientSession, node: Any, token: str, task: str
) -> list[float]:
    lags = []
    async for message, arrived in _stream(client, node, token, task):
        if message.get("type") == "token":
            lags.append(max(0.0, arrived - _stamp(message)))
        if message.get("type") == "status" and message.get("status") == "completed":
            break
    return lags


async def _reads(
    client: aiohttp.ClientSession, nodes: list[Any], task: str
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop = time.monotonic() + 3.0

    async def reader(n: int) -> None:
        node = nodes[n % len(nodes)]
        while time.monotonic() < stop:
            began = time.perf_counter()
            async with client.get(f"{node.url}/api/tasks/{task}") as response:
                await response.read()
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(reader(n) for n in range(20)))
    return len(latencies), latencies


async def _takeover(
    client: aiohttp.ClientSession, nodes: list[Any], sessions: list[str], token: str, model: Any
) -> tuple[str, float, str, str]:
    from scripted_provider import ScriptedTurn

    model.script([ScriptedTurn(text="Wait.", tool_calls=[("terminal", {"command": "sleep 60"})])])
    task = await _post(client, f"{nodes[0].url}/api/sessions/{sessions[0]}/tasks")
    killed = 0.0
    async for message, arrived in _stream(client, nodes[1], token, task):
        if message.get("type") == "tool_call" and not killed:
            nodes[0].close()  # kill -9 of the node running it
            killed = time.time()
        if message.get("type") == "error" and message.get("code") == "INTERRUPTED":
            return ("takeover after kill -9", arrived - killed, "s",
                    "to INTERRUPTED on another node; leases of 3 s")  # fmt: skip
    raise RuntimeError(f"no takeover seen ({os.getpid()})")
