"""Shared pieces: result rows, percentiles, /proc probes, the in-process server, the WS client."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.logging import configure_logging
from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.settings import Settings

REPO = Path(__file__).resolve().parent.parent
USER = {"email": "bench@example.com", "password": "bench-password-1", "name": "Bench"}


@dataclass
class Config:
    quick: bool
    workdir: Path


@dataclass
class Row:
    """One line of the table: a figure, its baseline from the same run, and its target."""

    benchmark: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    passed: bool | None = None  # None: informational, no target
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# -- /proc probes --------------------------------------------------------------------------


def proc_status(name: str, pid: int | str = "self") -> int:
    """A number from /proc/PID/status (kB for memory fields, a count for Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def os_threads() -> int:
    return proc_status("Threads")


def rss_mib() -> float:
    return proc_status("VmRSS") / 1024


def _parent_and_comm(pid: str) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return int(stat.rsplit(")", 1)[1].split()[1]), comm


def descendants() -> dict[int, str]:
    """Every live descendant process of this one: pid -> command name."""
    table = {
        int(p): info for p in os.listdir("/proc") if p.isdigit() and (info := _parent_and_comm(p))
    }
    found: dict[int, str] = {}
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier}
        found.update({pid: table[pid][1] for pid in frontier})
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


def quiet_logging() -> None:
    configure_logging("warning", "json")
    logging.getLogger("pykka").setLevel(logging.ERROR)


def bench_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "jwt_secret": "b" * 40,
        "rate_limit_authenticated": 0,
        "rate_limit_anonymous": 0,
        "log_level": "warning",
        # one bench user on one address holds every socket: the per-user and per-address
        # caps (protections, not costs) would refuse them
        "max_websockets_per_user": 100_000,
        "max_connections_per_address": 100_000,
        **overrides,
    }
    # the benches' tasks all belong to one user: the per-user cap would hold them back
    values.setdefault("max_tasks_per_user", values.get("max_concurrent_tasks", 10_000))
    return Settings(**values)


# -- the server under test, in this process ------------------------------------------------


class InProcessServer:
    """`Runtime` + `create_app` on an aiohttp `AppRunner`/`TCPSite`, on the running loop."""

    def __init__(self, settings: Settings, providers: ProviderRegistry) -> None:
        self.runtime = Runtime(settings, providers=providers)
        self.runner = web.AppRunner(create_app(self.runtime), access_log=None)
        self.url = ""
        self.http: aiohttp.ClientSession | None = None
        self.token = ""

    async def __aenter__(self) -> InProcessServer:
        await self.runner.setup()
        try:
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
            self.http = aiohttp.ClientSession(self.url)
            self.token = await signup(self.http)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.http is not None:
            await self.http.close()
        await self.runner.cleanup()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def ws_url(self, task_id: str) -> str:
        return f"{self.url.replace('http', 'ws', 1)}/ws/tasks/{task_id}?token={self.token}"

    async def new_task(self, workdir: Path, model: str, session_id: str | None = None) -> str:
        """Create a task (and a session for it unless one is given); returns the task id."""
        assert self.http is not None
        if session_id is None:
            workdir.mkdir(parents=True, exist_ok=True)
            body = {"name": workdir.name, "working_directory": str(workdir)}
            session_id = (await _ok(self.http.post("/api/sessions", json=body, headers=self.auth)))[
                "id"
            ]
        body = {"description": "benchmark", "model": model}
        path = f"/api/sessions/{session_id}/tasks"
        return str((await _ok(self.http.post(path, json=body, headers=self.auth)))["id"])


async def signup(http: aiohttp.ClientSession) -> str:
    """Register the bench user and log in; returns the access token."""
    await _ok(http.post("/api/auth/register", json=USER))
    login = {"email": USER["email"], "password": USER["password"]}
    return str((await _ok(http.post("/api/auth/login", json=login)))["access_token"])


async def _ok(request: Any) -> Any:
    async with request as response:
        payload = await response.json()
        if response.status >= 300:
            raise RuntimeError(f"{response.method} {response.url}: {response.status} {payload}")
        return payload


# -- the WebSocket client, in its own process ------------------------------------------------


class ClientProcess:
    """`python -m bench.wsclient`: its own process and core, so it never shares our GIL.

    Timestamps are `time.perf_counter_ns()`, CLOCK_MONOTONIC on Linux, so a token's
    creation time here and its receive time there are on the same clock.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, config: dict[str, Any], ready_timeout: float = 60) -> ClientProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.wsclient",
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        client = cls(process)
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(config).encode() + b"\n")
            await process.stdin.drain()
            line = await client._line(ready_timeout)
            if line.get("ready") is not True:
                raise RuntimeError(f"client not ready: {line}")
        except BaseException:
            await client.kill()
            raise
        return client

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError("the client process exited early")
        return dict(json.loads(raw))

    async def result(self, timeout: float) -> dict[str, Any]:
        try:
            line = await self._line(timeout)
            await asyncio.wait_for(self.process.wait(), 10)
            return line
        finally:
            await self.kill()

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
