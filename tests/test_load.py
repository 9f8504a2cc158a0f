"""Load: 200 tasks at once with 200 WebSocket subscribers on a scripted provider.

Sized for 2 cores: every task runs a real command and finishes; every subscriber
gets every event in order; afterwards no thread, process or file descriptor is
left over. Also: 100 WebSocket connect/disconnect cycles leak no descriptor.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage.postgres import PostgresStore

TASKS = 200
USER = {"email": "load@example.com", "password": "password123", "name": "L"}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def database_connections(runtime: Runtime) -> int:
    """The store's open connections to a database server (none for SQLite's file)."""
    store = runtime.store
    return store.open_connections() if isinstance(store, PostgresStore) else 0


def child_processes() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == os.getpid()]


def _parent(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def answer(body: dict[str, Any]) -> ScriptedTurn:
    if len(body["messages"]) == 2:
        return ScriptedTurn(
            text="Running it now.", tool_calls=[("terminal", {"command": "echo hi"})]
        )
    return ScriptedTurn(tool_calls=[("finish", {"summary": "done", "success": True})])


async def test_200_tasks_with_200_subscribers(
    aiohttp_client: Any,
    openai_server: ScriptedOpenAIServer,
    tmp_path: Path,
    database_url: str | None,
) -> None:
    openai_server.responder = answer
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
        jwt_secret="l" * 40,
        max_concurrent_tasks=TASKS,
        max_tasks_per_user=TASKS,  # one user runs them all
        max_websockets_per_user=TASKS,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
        session_idle_seconds=0.5,
    )
    env = {"OPENAI_API_KEY": "sk-load", "OPENAI_BASE_URL": openai_server.base_url}
    runtime = Runtime(settings, provider_env=env)
    client = await aiohttp_client(create_app(runtime))
    await client.post("/api/auth/register", json=USER)
    token = (await (await client.post("/api/auth/login", json=USER)).json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    baseline_threads, baseline_fds = threading.active_count(), open_fds()
    baseline_connections = database_connections(runtime)
    started = time.monotonic()

    async def one(index: int) -> list[dict[str, Any]]:
        workdir = tmp_path / f"w{index}"
        workdir.mkdir()
        body = {"name": f"s{index}", "working_directory": str(workdir)}
        session = await (await client.post("/api/sessions", json=body, headers=auth)).json()
        task = await (
            await client.post(
                f"/api/sessions/{session['id']}/tasks", json={"description": "say hi"}, headers=auth
            )
        ).json()
        async with client.ws_connect(f"/ws/tasks/{task['id']}?token={token}") as ws:
            messages = [message.json() async for message in ws]
            assert ws.close_code == 1000
        return messages

    streams = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(TASKS))), 120)
    elapsed = time.monotonic() - started
    for messages in streams:
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        assert messages[-1]["type"] == "status" and messages[-1]["status"] == "completed"
        results = [m for m in messages if m["type"] == "tool_result"]
        assert results[0]["output"].strip() == "hi" and results[0]["success"]
    print(f"{TASKS} tasks with {TASKS} subscribers in {elapsed:.1f}s")

    await until(
        lambda: threading.active_count() <= baseline_threads,
        timeout=20,
        what=lambda: (
            f"threads back to {baseline_threads} "
            f"(now {[thread.name for thread in threading.enumerate()]})"
        ),
    )
    await until(lambda: not child_processes(), timeout=10, what="no child process left")
    # on PostgreSQL, the read pool keeps the connections the load opened (at most its size)
    pool_growth = database_connections(runtime) - baseline_connections
    assert pool_growth <= (runtime.store.pool_size if pool_growth else 0)  # type: ignore[attr-defined]
    await until(
        lambda: open_fds() <= baseline_fds + 5 + pool_growth,
        timeout=10,
        what=f"fds back to {baseline_fds} + {pool_growth} pooled (now {open_fds()})",
    )


async def test_websocket_cycles_leak_no_descriptors(
    aiohttp_client: Any, runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(tool_calls=[("finish", {"summary": "done"})])])
    client = await aiohttp_client(create_app(runtime, manage_runtime=False))
    await client.post("/api/auth/register", json=USER)
    token = (await (await client.post("/api/auth/login", json=USER)).json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    body = {"name": "s", "working_directory": str(tmp_path)}
    session = await (await client.post("/api/sessions", json=body, headers=auth)).json()
    task = await (
        await client.post(
            f"/api/sessions/{session['id']}/tasks", json={"description": "x"}, headers=auth
        )
    ).json()
    async with client.ws_connect(f"/ws/tasks/{task['id']}?token={token}") as ws:
        assert [m.json() async for m in ws][-1]["status"] == "completed"

    async def cycle() -> None:
        async with client.ws_connect(f"/ws/tasks/{task['id']}?token={token}") as ws:
            await ws.receive()  # the first event of the history, then hang up

    for _ in range(5):  # warm up pools and caches
        await cycle()
    before = open_fds()
    for _ in range(100):
        await cycle()
    await until(lambda: open_fds() <= before + 2, timeout=5, what=f"fds {open_fds()} vs {before}")
    assert runtime.hub.subscriber_count() == 0
