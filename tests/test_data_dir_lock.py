"""One owner of a data directory: a second server, `run` or `Runtime` is refused, harmlessly."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import provider_env
from direct_db import direct_database
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from serve_process import ServeProcess, free_port
from waiting import pids_running, until

from minidevin.api import Runtime
from minidevin.runtime.data_lock import LOCK_NAME, DataDirInUse, DataDirLock
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import StoreError

USER = {"email": "lock@example.com", "password": "password123", "name": "L"}
ROOT = Path(__file__).resolve().parent.parent


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MINIDEVIN_")}


def second_process(*argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "minidevin.cli", *argv],
        cwd=ROOT,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,  # (without the lock a second server would not exit at all)
        check=False,
    )
    return done, time.monotonic() - started


def assert_refused(done: subprocess.CompletedProcess[str], data: Path, pid: int) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback, no log before it
    assert lines[0].startswith(f"minidevin: data directory {data} is in use")
    assert f"(pid {pid})" in lines[0]


async def test_a_held_data_directory_refuses_others_and_frees_on_kill_9(
    openai_server: ScriptedOpenAIServer, buggy_repo: Path, tmp_path: Path
) -> None:
    marker = f"300.{time.time_ns() % 1000000}"
    command = f"setsid sleep {marker} & wait"  # outlives a killed server on purpose
    openai_server.script(
        [ScriptedTurn(text="Running.", tool_calls=[("terminal", {"command": command})])]
    )
    data = tmp_path / "data"
    env = {**provider_env(openai_server), "MINIDEVIN_SANDBOX": "off"}
    holder = ServeProcess(data, env)
    try:
        holder.request("POST", "/api/auth/register", USER)
        token = holder.request("POST", "/api/auth/login", USER)["access_token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = {"name": "s", "working_directory": str(buggy_repo)}
        session = holder.request("POST", "/api/sessions", body, auth)
        tasks_url = f"/api/sessions/{session['id']}/tasks"
        task = holder.request("POST", tasks_url, {"description": "run long"}, auth)
        await until(lambda: bool(pids_running(f"sleep {marker} ", prefix=True)), what="command")
        # (the snapshot store of the task's working directory)
        snapshot = await until(
            lambda: next((data / "snapshots").glob("*.git"), None), what="the task's snapshot"
        )
        snapshot_files = sorted(p.relative_to(snapshot) for p in snapshot.rglob("*"))

        with pytest.raises(DataDirInUse) as refused:  # an embedded runtime, in this process
            await Runtime(Settings(data_dir=data)).start()
        assert refused.value.pid == holder.process.pid
        assert f"pid {holder.process.pid}" in str(refused.value)

        port = str(free_port())
        served, serve_seconds = second_process("serve", "--port", port, "--data-dir", str(data))
        assert_refused(served, data, holder.process.pid)
        ran, run_seconds = second_process(
            "run", "hi", "--dir", str(buggy_repo), "--data-dir", str(data)
        )
        assert_refused(ran, data, holder.process.pid)
        print(f"refused in {serve_seconds:.2f}s (serve), {run_seconds:.2f}s (run)")
        assert serve_seconds < 15 and run_seconds < 15

        # the holder's task, command, snapshot and lock file are as they were
        detail = holder.request("GET", f"/api/tasks/{task['id']}", headers=auth)
        assert detail["status"] == "running"
        assert pids_running(f"sleep {marker} ", prefix=True)
        assert sorted(p.relative_to(snapshot) for p in snapshot.rglob("*")) == snapshot_files
        assert (data / LOCK_NAME).read_text() == f"{holder.process.pid}\n"

        holder.signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.close()
    # the escaped `sleep` still runs: it did not inherit the lock, which died with the server
    assert pids_running(f"sleep {marker} ", prefix=True)
    successor = ServeProcess(data, env)
    try:
        assert (data / LOCK_NAME).read_text() == f"{successor.process.pid}\n"
        await until(lambda: not pids_running(f"sleep {marker}"), timeout=5, what="reaping")
        token = successor.request("POST", "/api/auth/login", USER)["access_token"]
        detail = successor.request(
            "GET", f"/api/tasks/{task['id']}", headers={"Authorization": f"Bearer {token}"}
        )
        assert detail["status"] == "failed"  # (interrupted: the successor owns it now)
    finally:
        successor.close()


async def test_two_runtimes_in_one_process_on_one_directory(
    runtime: Runtime, settings: Settings, buggy_repo: Path
) -> None:
    second = Runtime(settings)
    with pytest.raises(DataDirInUse, match="another runtime in this process") as refused:
        await second.start()
    assert refused.value.pid == os.getpid()
    await second.close()  # closing the refused one releases nothing of the holder's
    assert (settings.data_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    session = await runtime.create_session("still mine", buggy_repo)
    assert (await runtime.get_session(session.id)).name == "still mine"

    await runtime.close()  # the owner leaves: the next one may start, on the same directory
    assert (settings.data_dir / LOCK_NAME).read_text() == ""
    async with Runtime(settings) as successor:
        assert (await successor.get_session(session.id)).name == "still mine"


async def test_a_failed_start_lets_go_of_the_directory(settings: Settings) -> None:
    settings.data_dir.mkdir(mode=0o700)
    if settings.database_url is None:
        with sqlite3.connect(settings.database_path) as db:
            db.execute("PRAGMA user_version = 999")  # a newer minidevin's database
    else:
        with direct_database(settings) as db:
            db.execute("INSERT INTO schema_version (version) VALUES (999)")
    with pytest.raises(StoreError, match="newer"):
        await Runtime(settings).start()
    lock = DataDirLock(settings.data_dir)
    lock.acquire()  # free again
    lock.release()
