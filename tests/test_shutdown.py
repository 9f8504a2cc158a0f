"""Graceful shutdown of a real `minidevin serve` process on SIGTERM and SIGINT."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from serve_process import ServeProcess
from waiting import pids_running, until

USER = {"email": "s@example.com", "password": "password123", "name": "S"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_stops_tasks_closes_sockets_and_exits_quickly(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, signum: int, database_url: str | None
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = f"300.{signum}{time.time_ns() % 100000}"  # unique: found on the host by cmdline
    command = f"bash -c 'sleep {marker} & echo started > grandchild.txt; wait'"
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": command})])])
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_server.base_url}
    server = ServeProcess(tmp_path / "data", env, database_url)
    try:
        server.request("POST", "/api/auth/register", USER)
        token = server.request("POST", "/api/auth/login", USER)["access_token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        session = server.request(
            "POST", "/api/sessions", {"name": "s", "working_directory": str(work)}, auth
        )
        task = server.request(
            "POST", f"/api/sessions/{session['id']}/tasks", {"description": "run long"}, auth
        )
        await until(lambda: bool(pids_running(f"sleep {marker}")), what="the command")

        async with aiohttp.ClientSession() as http:
            ws_url = f"{server.url.replace('http', 'ws')}/ws/tasks/{task['id']}?token={token}"
            async with http.ws_connect(ws_url) as ws:
                started = time.monotonic()
                server.signal(signum)
                messages: list[Any] = [m async for m in ws]
                assert ws.close_code == 1001, messages
                code = server.wait(timeout=10)
                elapsed = time.monotonic() - started
        assert code == 0 and elapsed < 10, (code, elapsed)
        print(f"shutdown took {elapsed:.2f}s")
        await until(
            lambda: not pids_running(f"sleep {marker}"), timeout=3, what="the command to die"
        )
    finally:
        server.close()

    restarted = ServeProcess(tmp_path / "data", env, database_url)
    try:
        token = restarted.request("POST", "/api/auth/login", USER)["access_token"]
        detail = restarted.request(
            "GET", f"/api/tasks/{task['id']}", headers={"Authorization": f"Bearer {token}"}
        )
        assert detail["status"] == "stopped"
    finally:
        restarted.close()
