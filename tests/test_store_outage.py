"""A storage outage under a live, streaming task, through a real `minidevin serve`.

The database is locked by another process, or its disk is full (a small tmpfs),
while a model streams. Nothing the task emitted is lost: the events are held
and the task waits (backpressure); when the store is back they are committed in
order and every subscriber reads them with no `seq` gap. Past
`MINIDEVIN_STORE_RETRY_SECONDS` the task stops with `STORE_UNAVAILABLE`,
subscribers are told (error, close 1011) and resume with `?after=`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import sqlite3
import subprocess
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from waiting import until

# about SQLite itself: its write lock held by another process, a full tmpfs under its file
# (PostgreSQL's outages: test_store_postgres.py)
pytestmark = pytest.mark.sqlite_only

USER = {"email": "outage@example.com", "password": "password123", "name": "O"}
TEXT = " ".join(f"w{i}" for i in range(400))


class Served:
    """A real server with one user, one session and one streaming task."""

    def __init__(self, data_dir: Path, work: Path, scripted: ScriptedOpenAIServer, **env: str):
        self.data_dir = data_dir
        self.process = ServeProcess(
            data_dir,
            {
                "OPENAI_API_KEY": "sk-test",
                "OPENAI_BASE_URL": scripted.base_url,
                "MINIDEVIN_SANDBOX": "off",
                "MINIDEVIN_TOKEN_COALESCE_MS": "0",  # one event a delta: many small commits
                **env,
            },
        )
        self.process.request("POST", "/api/auth/register", USER)
        self.token = self.process.request("POST", "/api/auth/login", USER)["access_token"]
        self.auth = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        body = {"name": "s", "working_directory": str(work)}
        self.session = self.call("POST", "/api/sessions", body)
        self.task = self.call(
            "POST", f"/api/sessions/{self.session['id']}/tasks", {"description": "talk"}
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.process.request(method, path, body, self.auth)

    def ws_url(self, after: int = 0) -> str:
        base = self.process.url.replace("http", "ws")
        return f"{base}/ws/tasks/{self.task['id']}?token={self.token}&after={after}"

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.process.logs() if line.get("event") == event]

    def stored_seqs(self) -> list[int]:
        with contextlib.closing(sqlite3.connect(self.data_dir / "minidevin.sqlite3")) as db:
            rows = db.execute(
                "SELECT seq FROM events WHERE task_id = ? ORDER BY seq", (self.task["id"],)
            )
            return [seq for (seq,) in rows]


async def read_until(ws: aiohttp.ClientWebSocketResponse, seen: list[dict[str, Any]], n: int):
    """Read messages into `seen` until it holds `n` token events."""
    while sum(m["type"] == "token" for m in seen) < n:
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        seen.append(json.loads(message.data))


async def read_to_close(ws: aiohttp.ClientWebSocketResponse, seen: list[dict[str, Any]]) -> int:
    """Read every message into `seen` until the server closes; the close code."""
    async with asyncio.timeout(30):
        async for message in ws:
            seen.append(json.loads(message.data))
    assert ws.close_code is not None
    return ws.close_code


@contextlib.contextmanager
def database_locked(path: Path) -> Iterator[None]:
    """Another process's connection holds the database's write lock."""
    locker = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        locker.execute("BEGIN IMMEDIATE")
        yield
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(1, len(seqs) + 1))


async def test_a_locked_database_holds_the_events_and_releases_them_in_order(
    tmp_path: Path, scripted: ScriptedOpenAIServer
) -> None:
    scripted.script([ScriptedTurn(text=TEXT, chunk_delay=0.003), finish()])
    (tmp_path / "work").mkdir()
    served = Served(tmp_path / "data", tmp_path / "work", scripted)
    try:
        seen: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url()) as ws:
            await read_until(ws, seen, 10)
            with database_locked(tmp_path / "data" / "minidevin.sqlite3"):
                await until(lambda: served.logged("store_unavailable"), what="the outage")
            code = await read_to_close(ws, seen)
        recovered = served.logged("store_recovered")
        stored = served.stored_seqs()
    finally:
        served.process.close()
    assert code == 1000 and seen[-1]["type"] == "status" and seen[-1]["status"] == "completed"
    assert contiguous([m["seq"] for m in seen])  # no gap for the subscriber
    assert stored == [m["seq"] for m in seen]  # none missing in the database
    assert "".join(m["content"] for m in seen if m["type"] == "token") == TEXT
    assert len(recovered) == 1 and recovered[0]["held_events"] >= 1


async def test_an_outage_past_the_retry_window_stops_the_task_and_tells_subscribers(
    tmp_path: Path, scripted: ScriptedOpenAIServer
) -> None:
    long_text = " ".join(f"w{i}" for i in range(5000))
    scripted.script([ScriptedTurn(text=long_text, chunk_delay=0.003), finish()])
    (tmp_path / "work").mkdir()
    served = Served(
        tmp_path / "data", tmp_path / "work", scripted, MINIDEVIN_STORE_RETRY_SECONDS="1"
    )
    tasks_url = f"/api/sessions/{served.session['id']}/tasks"
    try:
        seen: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(served.ws_url()) as ws:
                await read_until(ws, seen, 10)
                with database_locked(tmp_path / "data" / "minidevin.sqlite3"):
                    code = await read_to_close(ws, seen)
                    notice = seen.pop()  # not an event of the log: no seq
                    # requests that write fail clearly; reads go on
                    with pytest.raises(urllib.error.HTTPError) as refused:
                        served.call("POST", tasks_url, {"description": "another"})
                    assert refused.value.code == 503
                    assert json.loads(refused.value.read())["code"] == "STORE_UNAVAILABLE"
                    assert served.call("GET", f"/api/tasks/{served.task['id']}")["id"]
                    health = served.process.request("GET", "/health")
                    assert health["status"] == "degraded"
                    assert health["store"]["status"] == "unavailable"
                    # a new subscriber meanwhile: the history, then the same notice
                    late: list[dict[str, Any]] = []
                    async with http.ws_connect(served.ws_url()) as again:
                        late_code = await read_to_close(again, late)
                    assert late_code == 1011 and late[-1]["code"] == "STORE_UNAVAILABLE"
            await until(lambda: served.logged("store_recovered"), what="the store back")
            last = seen[-1]["seq"]
            rest: list[dict[str, Any]] = []
            async with http.ws_connect(served.ws_url(after=last)) as ws:
                end_code = await read_to_close(ws, rest)
        stored = served.stored_seqs()
        row = served.call("GET", f"/api/tasks/{served.task['id']}")
        health = served.process.request("GET", "/health")
    finally:
        served.process.close()
    assert code == 1011
    assert notice["type"] == "error" and notice["code"] == "STORE_UNAVAILABLE"
    assert "seq" not in notice and "could not be written" in notice["error"]
    everything = seen + rest
    assert end_code == 1000 and contiguous([m["seq"] for m in everything])
    assert [(m["type"], m.get("code") or m.get("status")) for m in rest[-2:]] == [
        ("error", "STORE_UNAVAILABLE"),
        ("status", "failed"),
    ]
    assert stored == [m["seq"] for m in everything]
    assert row["status"] == "failed"
    assert health["status"] == "healthy" and health["store"] == {"status": "ok"}


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


def _fill(path: Path) -> None:
    """Write `path` until the filesystem has no room left."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as filler:
        while True:
            try:
                filler.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                block = block[: len(block) // 2]
                if not block:
                    return


@contextlib.contextmanager
def disk_full(data: Path) -> Iterator[None]:
    _fill(data / "filler")
    try:
        yield
    finally:
        (data / "filler").unlink()


async def test_a_full_disk_holds_the_events_until_there_is_room(
    tmp_path: Path, scripted: ScriptedOpenAIServer
) -> None:
    data = tmp_path / "data"
    _mount_tmpfs(data, "16m")
    try:
        scripted.script([ScriptedTurn(text=TEXT, chunk_delay=0.003), finish()])
        (tmp_path / "work").mkdir()
        served = Served(data, tmp_path / "work", scripted)
        try:
            seen: list[dict[str, Any]] = []
            async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url()) as ws:
                await read_until(ws, seen, 10)
                with disk_full(data):
                    await until(lambda: served.logged("store_unavailable"), what="the outage")
                code = await read_to_close(ws, seen)
            detail = served.call("GET", f"/api/tasks/{served.task['id']}")
            artifacts = served.call("GET", f"/api/tasks/{served.task['id']}/artifacts")
            stored = served.stored_seqs()
            unavailable = served.logged("store_unavailable")
        finally:
            served.process.close()
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
    assert "full" in unavailable[0]["error"]
    assert code == 1000 and seen[-1]["status"] == "completed" and detail["status"] == "completed"
    assert contiguous([m["seq"] for m in seen]) and stored == [m["seq"] for m in seen]
    assert "".join(m["content"] for m in seen if m["type"] == "token") == TEXT
    assert {a["name"] for a in artifacts} == {"plan.json", "diff.patch", "trajectory.json"}
