"""`minidevin serve` as a real process: a busy port, and where it says it listens."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def serve_argv(data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "minidevin.cli", "serve", "--data-dir", str(data), *extra]


def serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIDEVIN_")}
    return {**env, "MINIDEVIN_LOG_FORMAT": "json", "MINIDEVIN_JWT_SECRET": "s" * 40}


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another process (this one) listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_busy_port_is_one_line_and_exit_1(held_port: int, tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        serve_argv(data, "--port", str(held_port)),
        cwd=ROOT,
        env=serve_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"minidevin: cannot listen on 127.0.0.1:{held_port}: address already in use\n"
    )
    assert done.stdout == ""  # no server_listening, no runtime_started, no traceback
    assert not data.exists()  # nothing was started, so nothing of the data directory changed


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of the log so far (a line being written is not one yet)."""
    text = path.read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_server_listening_comes_once_listening_with_the_real_address(tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            serve_argv(tmp_path / "data", "--port", "0"),  # the system picks the port
            cwd=ROOT,
            env=serve_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening_logged() -> list[dict[str, Any]]:
            assert process.poll() is None, f"exit {process.poll()}: {log_path.read_text()}"
            return [e for e in log_lines(log_path) if e["event"] == "server_listening"]

        listening = wait_for(listening_logged, 30, what=lambda: log_path.read_text(), interval=0.02)
        url = listening[0]["url"]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert listening[0]["urls"] == [url]
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            assert json.loads(response.read())["status"] == "healthy"
        events = [e["event"] for e in log_lines(log_path)]
        assert events.index("runtime_started") < events.index("server_listening")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
