"""`kill -9` of a real server with tasks queued, then a restart on the same data directory:
queued tasks stay queued and run in their sessions' order, only the live one is
INTERRUPTED; and rows that disagree with their logs are repaired from the logs at start."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from direct_db import direct_database
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from waiting import pids_running, until

from minidevin.runtime.settings import Settings

USER = {"email": "q@example.com", "password": "password123", "name": "Q"}


class Server:
    """A user's view of `minidevin serve` on one data directory, across restarts."""

    def __init__(
        self, tmp_path: Path, scripted: ScriptedOpenAIServer, database_url: str | None
    ) -> None:
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.data = tmp_path / "data"
        self.env = {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": scripted.base_url,
            "MINIDEVIN_SANDBOX": "off",
            "MINIDEVIN_MAX_CONCURRENT_TASKS": "1",  # one runs; every other task queues
        }
        self.process: ServeProcess | None = None

    def start(self, *, register: bool = False) -> ServeProcess:
        self.process = ServeProcess(self.data, self.env, self.database_url)
        if register:
            self.process.request("POST", "/api/auth/register", USER)
        self.token = self.process.request("POST", "/api/auth/login", USER)["access_token"]
        self.auth = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        return self.process

    def kill(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process.close()

    def session(self, name: str) -> dict[str, Any]:
        work = self.tmp_path / name
        work.mkdir()
        body = {"name": name, "working_directory": str(work)}
        return self.call("POST", "/api/sessions", body)

    def task(self, session: dict[str, Any], description: str) -> dict[str, Any]:
        return self.call(
            "POST", f"/api/sessions/{session['id']}/tasks", {"description": description}
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.process is not None
        return self.process.request(method, path, body, self.auth)

    def status(self, task: dict[str, Any]) -> str:
        return str(self.call("GET", f"/api/tasks/{task['id']}")["status"])

    async def log(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """The task's whole log (history, then live to its final status)."""
        assert self.process is not None
        url = f"{self.process.url.replace('http', 'ws')}/ws/tasks/{task['id']}?token={self.token}"
        async with asyncio.timeout(15):  # a stream that never ends fails the test
            async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
                return [json.loads(message.data) async for message in ws]

    def close(self) -> None:
        if self.process is not None:
            self.process.close()


def kinds(log: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(e["type"], e.get("status") or e.get("code")) for e in log]


def no_gap(log: list[dict[str, Any]]) -> bool:
    return [e["seq"] for e in log] == list(range(1, len(log) + 1))


async def test_queued_tasks_survive_a_kill_and_run_in_order(
    tmp_path: Path, scripted: ScriptedOpenAIServer, database_url: str | None
) -> None:
    marker = f"sleep 300.{time.time_ns() % 1000000}"
    scripted.script([ScriptedTurn(text="Running.", tool_calls=[("terminal", {"command": marker})])])
    server = Server(tmp_path, scripted, database_url)
    try:
        server.start(register=True)
        first, other, gone = server.session("a"), server.session("b"), server.session("c")
        live = server.task(first, "run the long command")
        a2, a3 = server.task(first, "second of a"), server.task(first, "third of a")
        b1, c1 = server.task(other, "first of b"), server.task(gone, "first of c")
        assert [t["status"] for t in (live, a2, a3, b1, c1)] == ["running"] + ["queued"] * 4
        await until(lambda: pids_running(marker), 20, "the command to run")
        server.kill()
        shutil.rmtree(tmp_path / "c")  # c's working directory is gone at the restart

        scripted.script([finish("a2 done"), finish("a3 done"), finish("b1 done")])
        server.start()
        queued = (a2, a3, b1)

        def settled() -> list[str]:
            return [server.status(t) for t in (live, *queued, c1)]

        expected = ["failed", "completed", "completed", "completed", "failed"]
        await until(lambda: settled() == expected, 30, lambda: f"the queue to run: {settled()}")
        logs = {t["id"]: await server.log(t) for t in (live, *queued, c1)}
        server_log = server.process.logs() if server.process else []
    finally:
        server.close()
        for pid in pids_running(marker):  # a failed test leaks nothing
            os.kill(pid, signal.SIGKILL)

    assert all(no_gap(log) for log in logs.values())
    # only the live task was interrupted
    assert kinds(logs[live["id"]])[-2:] == [("error", "INTERRUPTED"), ("status", "failed")]
    for task in queued:  # queued, queued again at the restart, then run: never failed
        log = logs[task["id"]]
        assert kinds(log)[:3] == [("status", "queued"), ("status", "queued"), ("status", "running")]
        assert log[1]["message"] == "Task queued again after a server restart"
        assert ("error", "INTERRUPTED") not in kinds(log) and ("resumed", None) not in kinds(log)
        assert kinds(log)[-1] == ("status", "completed")
        assert not any(e["type"] == "status" and e["status"] == "failed" for e in log)
    # each ran from a fresh conversation, a session's tasks in creation order
    prompts = [[m for m in r["messages"] if m["role"] == "user"][-1] for r in scripted.requests]
    ran = [p["content"] for p in prompts[1:]]
    assert sorted(ran) == ["first of b", "second of a", "third of a"]
    assert ran.index("second of a") < ran.index("third of a")
    a2_end, a3_start = logs[a2["id"]][-1]["timestamp"], logs[a3["id"]][2]["timestamp"]
    assert a2_end <= a3_start
    # the task whose directory is gone ends with a clear error, its log going on
    c_kinds = kinds(logs[c1["id"]])
    assert c_kinds == [("status", "queued"), ("error", "REQUEUE_FAILED"), ("status", "failed")]
    assert "cannot run after the server restart" in logs[c1["id"]][1]["error"]
    requeued = [e["task_id"] for e in server_log if e["event"] == "task_requeued_after_restart"]
    assert requeued == [a2["id"], a3["id"], b1["id"]]


async def test_rows_that_disagree_with_their_logs_are_repaired_at_start(
    tmp_path: Path, scripted: ScriptedOpenAIServer, database_url: str | None
) -> None:
    scripted.script([finish("one done"), finish("two done")])
    server = Server(tmp_path, scripted, database_url)
    try:
        server.start(register=True)
        session = server.session("w")
        one, two = server.task(session, "one"), server.task(session, "two")
        await until(
            lambda: [server.status(one), server.status(two)] == ["completed", "completed"],
            30,
            "both tasks to complete",
        )
        one_log = await server.log(one)
        server.kill()
        # as an older version could leave them: a row behind its log, a row ahead of it
        with direct_database(Settings(data_dir=server.data, database_url=database_url)) as db:
            db.execute(
                "UPDATE tasks SET status = 'running', completed_at = NULL, result = NULL "
                "WHERE id = ?",
                (one["id"],),
            )
            db.execute(
                "DELETE FROM events WHERE task_id = ? "
                "AND seq = (SELECT MAX(seq) FROM events WHERE task_id = ?)",
                (two["id"], two["id"]),
            )
        server.start()
        one_row = server.call("GET", f"/api/tasks/{one['id']}")
        two_row = server.call("GET", f"/api/tasks/{two['id']}")
        one_after, two_after = await server.log(one), await server.log(two)
        server_log = server.process.logs() if server.process else []
    finally:
        server.close()

    # the row that fell behind shows its log's end again, untouched otherwise
    final = one_log[-1]
    assert one_row["status"] == "completed" and final["status"] == "completed"
    assert one_row["completed_at"] == final["timestamp"]
    assert one_row["result"] == final["result"]
    assert one_after == one_log
    # the row that claimed an end its log never got: live again, so interrupted, and its
    # stream now ends
    assert two_row["status"] == "failed"
    assert kinds(two_after)[-2:] == [("error", "INTERRUPTED"), ("status", "failed")]
    assert no_gap(two_after)
    repaired = [e["task_id"] for e in server_log if e["event"] == "task_row_repaired"]
    assert sorted(repaired) == sorted([one["id"], two["id"]])
