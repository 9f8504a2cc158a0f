"""`kill -9` of a real server while a task's command runs, then a restart on the same data
directory: the task queued behind the killed one stays queued and runs after the restart;
with `MINIDEVIN_RESUME_INTERRUPTED=true` the killed one goes on first, in the session's order."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from waiting import pids_running, until

from minidevin.runtime.task_history import INTERRUPTED_OUTPUT

USER = {"email": "r@example.com", "password": "password123", "name": "R"}
FIRST, SECOND = "run the long command", "wait your turn"


class Interrupted:
    """A session with a task whose command ran and one queued behind it, when the server
    was killed with SIGKILL."""

    def __init__(self, tmp_path: Path, resume: bool, database_url: str | None) -> None:
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.data = tmp_path / "data"
        self.env = {
            "OPENAI_API_KEY": "sk-test",
            "MINIDEVIN_SANDBOX": "off",
            "MINIDEVIN_RESUME_INTERRUPTED": "true" if resume else "false",
        }
        self.marker = f"sleep 300.{time.time_ns() % 1000000}"

    async def crash(self, scripted: ScriptedOpenAIServer) -> Interrupted:
        self.env["OPENAI_BASE_URL"] = scripted.base_url
        work = self.tmp_path / "work"
        work.mkdir()
        scripted.script(
            [ScriptedTurn(text="Running it.", tool_calls=[("terminal", {"command": self.marker})])]
        )
        server = ServeProcess(self.data, self.env, self.database_url)
        try:
            server.request("POST", "/api/auth/register", USER)
            self.login(server)
            body = {"name": "s", "working_directory": str(work)}
            self.session = server.request("POST", "/api/sessions", body, self.auth)
            tasks = f"/api/sessions/{self.session['id']}/tasks"
            self.task = server.request("POST", tasks, {"description": FIRST}, self.auth)
            self.queued = server.request("POST", tasks, {"description": SECOND}, self.auth)
            assert self.queued["status"] == "queued"
            await until(lambda: pids_running(self.marker), 20, "the command to run")
            self.last_seq = await self.tool_call_seq(server, self.task["id"])
            server.signal(signal.SIGKILL)
            server.wait(timeout=10)
        finally:
            server.close()
        assert len(scripted.requests) == 1  # the second task never reached the model
        return self

    def login(self, server: ServeProcess) -> None:
        self.token = server.request("POST", "/api/auth/login", USER)["access_token"]
        self.auth = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    async def tool_call_seq(self, server: ServeProcess, task_id: str) -> int:
        """The seq of the task's tool_call (read over the WebSocket)."""
        url = f"{server.url.replace('http', 'ws')}/ws/tasks/{task_id}?token={self.token}"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            while True:
                message = json.loads((await ws.receive(timeout=10)).data)
                if message["type"] == "tool_call":
                    return message["seq"]

    def restart(self) -> ServeProcess:
        server = ServeProcess(self.data, self.env, self.database_url)
        self.login(server)
        return server

    def statuses(self, server: ServeProcess) -> list[str]:
        url = f"/api/sessions/{self.session['id']}/tasks"
        rows = server.request("GET", url, headers=self.auth)
        by_id = {row["id"]: row["status"] for row in rows}
        return [by_id[self.task["id"]], by_id[self.queued["id"]]]

    async def log(self, server: ServeProcess, task_id: str) -> list[dict[str, Any]]:
        """The task's whole log (history to its last final status, then live to the end)."""
        url = f"{server.url.replace('http', 'ws')}/ws/tasks/{task_id}?token={self.token}"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            return [json.loads(message.data) async for message in ws]

    def cleanup(self) -> None:
        for pid in pids_running(self.marker):  # a failed test leaks nothing
            os.kill(pid, signal.SIGKILL)


async def test_interrupted_tasks_are_resumed_at_the_next_start_in_order(
    tmp_path: Path, scripted: ScriptedOpenAIServer, database_url: str | None
) -> None:
    crashed = await Interrupted(tmp_path, resume=True, database_url=database_url).crash(scripted)
    scripted.script([finish("Checked and done"), finish("My turn, done")])
    server = crashed.restart()
    try:

        def ended() -> bool:
            return crashed.statuses(server) == ["completed", "completed"]

        await until(ended, 30, lambda: f"both tasks to complete: {crashed.statuses(server)}")
        first = await crashed.log(server, crashed.task["id"])
        second = await crashed.log(server, crashed.queued["id"])
        logs = server.logs()
    finally:
        server.close()
        crashed.cleanup()

    # same task, its log goes on: INTERRUPTED, failed, then resumed and completed
    assert [e["seq"] for e in first] == list(range(1, len(first) + 1))
    assert {e["task_id"] for e in first} == {crashed.task["id"]}
    after_kill = [e for e in first if e["seq"] > crashed.last_seq]
    kinds = [(e["type"], e.get("status") or e.get("code")) for e in after_kill]
    assert kinds[:4] == [
        ("error", "INTERRUPTED"),
        ("status", "failed"),
        ("resumed", None),
        ("status", "queued"),
    ]
    assert kinds[-1] == ("status", "completed")
    # the call that never got its result is answered before the model goes on
    call = next(e for e in first if e["type"] == "tool_call")
    answered = [e for e in after_kill if e.get("call_id") == call["call_id"]]
    assert [(e["type"], e["output"]) for e in answered] == [("tool_result", INTERRUPTED_OUTPUT)]
    next_turn = next(e for e in after_kill if e["type"] == "turn_start")
    assert answered[0]["seq"] < next_turn["seq"]

    # the model's next request (the first after the restart) is the first task's
    assert len(scripted.requests) == 3
    messages = scripted.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1]["content"] == FIRST
    assert messages[2]["tool_calls"][0]["id"] == messages[3]["tool_call_id"] == call["call_id"]
    assert messages[3]["content"] == INTERRUPTED_OUTPUT
    # the queued task was never failed nor resumed: queued again, it ran after the first
    last_user = [m for m in scripted.requests[2]["messages"] if m["role"] == "user"][-1]
    assert last_user["content"] == SECOND
    assert [e["seq"] for e in second] == list(range(1, len(second) + 1))
    kinds = [(e["type"], e.get("status") or e.get("code")) for e in second]
    assert kinds[:3] == [("status", "queued"), ("status", "queued"), ("status", "running")]
    assert not any(kind in (("resumed", None), ("error", "INTERRUPTED")) for kind in kinds)
    assert second[-1]["type"] == "status" and second[-1]["status"] == "completed"
    assert second[2]["timestamp"] >= first[-1]["timestamp"]  # (it started once the first ended)
    resumed = [entry["task_id"] for entry in logs if entry["event"] == "task_resumed_after_restart"]
    assert resumed == [crashed.task["id"]]
    requeued = [
        entry["task_id"] for entry in logs if entry["event"] == "task_requeued_after_restart"
    ]
    assert requeued == [crashed.queued["id"]]


async def test_without_the_setting_interrupted_tasks_stay_failed(
    tmp_path: Path, scripted: ScriptedOpenAIServer, database_url: str | None
) -> None:
    crashed = await Interrupted(tmp_path, resume=False, database_url=database_url).crash(scripted)
    scripted.script([finish("The queued one, done")])
    server = crashed.restart()
    try:

        def ended() -> bool:
            return crashed.statuses(server) == ["failed", "completed"]

        await until(ended, 30, lambda: f"the queued task to run: {crashed.statuses(server)}")
        first = await crashed.log(server, crashed.task["id"])
        logs = server.logs()
    finally:
        server.close()
        crashed.cleanup()
    assert [e["type"] for e in first[-2:]] == ["error", "status"]
    assert first[-2]["code"] == "INTERRUPTED" and first[-1]["status"] == "failed"
    assert not any(e["type"] == "resumed" for e in first)
    assert not any(entry["event"] == "task_resumed_after_restart" for entry in logs)
    assert len(scripted.requests) == 2  # the queued task's, not the failed one's
    last_user = [m for m in scripted.requests[1]["messages"] if m["role"] == "user"][-1]
    assert last_user["content"] == SECOND
