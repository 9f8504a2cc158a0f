"""`kill -9` of a real server mid-task: nothing it started survives, nothing told is lost."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from serve_process import ServeProcess
from waiting import pids_running, until

USER = {"email": "c@example.com", "password": "password123", "name": "C"}


@pytest.mark.parametrize("sandbox", ["off", "auto"])
async def test_kill_9_mid_task(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, sandbox: str, database_url: str | None
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = f"300.{time.time_ns() % 1000000}"
    command = f"setsid sleep {marker} & wait"  # escapes the process group on purpose
    openai_server.script(
        [ScriptedTurn(text="Running.", tool_calls=[("terminal", {"command": command})])]
    )
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": openai_server.base_url,
        "MINIDEVIN_SANDBOX": sandbox,
    }
    server = ServeProcess(tmp_path / "data", env, database_url)
    try:
        server.request("POST", "/api/auth/register", USER)
        token = server.request("POST", "/api/auth/login", USER)["access_token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        session = server.request(
            "POST", "/api/sessions", {"name": "s", "working_directory": str(work)}, auth
        )
        tasks_url = f"/api/sessions/{session['id']}/tasks"
        task = server.request("POST", tasks_url, {"description": "run long"}, auth)
        queued = server.request("POST", tasks_url, {"description": "wait your turn"}, auth)
        assert queued["status"] == "queued"
        # the escaped `sleep` itself, not only the bash whose command line names it
        escaped = f"sleep {marker} "
        await until(lambda: bool(pids_running(escaped, prefix=True)), what="the command")

        ws_url = f"{server.url.replace('http', 'ws')}/ws/tasks/{task['id']}?token={token}"
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
            seen = []
            while not any(m["type"] == "tool_call" for m in seen):
                seen.append(json.loads((await ws.receive(timeout=10)).data))
            server.signal(signal.SIGKILL)
            server.wait(timeout=10)
    finally:
        server.close()

    if sandbox == "auto":  # bwrap --die-with-parent: the whole sandbox dies with the server
        started = time.monotonic()
        await until(lambda: not pids_running(f"sleep {marker}"), timeout=10, what="the sandbox")
        print(f"sandbox gone after {time.monotonic() - started:.2f}s")
    else:  # bash died with the server (pdeathsig); what left its group lives on, until...
        assert pids_running(f"sleep {marker}")

    restarted = ServeProcess(tmp_path / "data", env, database_url)
    try:
        # ...the restarted server reaps it, by the task id in its environment
        await until(lambda: not pids_running(f"sleep {marker}"), timeout=3, what="reaping")
        token = restarted.request("POST", "/api/auth/login", USER)["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        tasks = restarted.request("GET", f"/api/sessions/{session['id']}/tasks", headers=auth)
        # the live task failed; the queued one was queued again (see test_crash_queue.py)
        assert tasks[0]["id"] == task["id"] and tasks[0]["status"] == "failed"
        last = seen[-1]["seq"]
        url = f"{restarted.url.replace('http', 'ws')}/ws/tasks/{task['id']}?token={token}"
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}&after={last}") as ws:
            missed = [json.loads(m.data) async for m in ws]
        assert missed[0]["seq"] == last + 1
        assert [m["seq"] for m in missed] == list(range(last + 1, last + 1 + len(missed)))
        assert missed[-2]["type"] == "error" and missed[-2]["code"] == "INTERRUPTED"
        assert missed[-1]["type"] == "status" and missed[-1]["status"] == "failed"
    finally:
        restarted.close()
