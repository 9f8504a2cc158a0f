"""Item 1: `GET /api/sessions/{id}` with an API key, against a bare aiohttp handler.

Server: `minidevin serve` as its own process (rate limits off), so client and
server never share a core, loop or GIL. Baseline: `python -m bench.bare`, a
bare aiohttp app answering the same path with the same JSON (fetched from the
real server first), also its own process. Client: a minimal keep-alive HTTP/1.1
client on asyncio streams in this process, the same for both, a fixed number
of connections each sending one request at a time. Rounds alternate between
the two servers so that background load hits both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import REPO, Config, Row, free_port, percentile, signup

CONNECTIONS = 8


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def worker(port: int, request: bytes, start: float, stop: float, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (sent := time.perf_counter()) < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
            await reader.readexactly(length)
            if sent >= start:
                tally.latencies.append(time.perf_counter() - sent)
                if head[9:12] != b"200":
                    tally.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def hammer(port: int, request: bytes, seconds: float, server_pid: int, tally: Tally) -> None:
    """Warm up 0.5 s, then `seconds` of load; adds to `tally`."""
    start = time.perf_counter() + 0.5
    stop = start + seconds
    cpu = time.process_time()
    await asyncio.sleep(0)
    server_cpu = cpu_seconds(server_pid)
    await asyncio.gather(*(worker(port, request, start, stop, tally) for _ in range(CONNECTIONS)))
    tally.seconds += seconds
    tally.client_cpu += time.process_time() - cpu
    tally.server_cpu += cpu_seconds(server_pid) - server_cpu


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *argv], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def prepare(url: str, workdir: Path) -> tuple[str, str, bytes]:
    """User, API key and session on the real server; returns (key, path, response body)."""
    async with aiohttp.ClientSession(url) as http:
        token = await signup(http)
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post("/api/auth/api-keys", json={"name": "bench"}, headers=auth) as r:
            key = (await r.json())["key"]
        body = {"name": "rest", "working_directory": str(workdir)}
        async with http.post("/api/sessions", json=body, headers=auth) as r:
            session_id = (await r.json())["id"]
        path = f"/api/sessions/{session_id}"
        async with http.get(path, headers={"X-API-Key": key}) as r:
            if r.status != 200:
                raise RuntimeError(f"GET {path} with the API key: {r.status}")
            return key, path, await r.read()


async def run(cfg: Config) -> list[Row]:
    base = cfg.workdir / "rest"
    (base / "work").mkdir(parents=True)
    real_port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIDEVIN_")}
    env.update(
        MINIDEVIN_RATE_LIMIT_AUTHENTICATED="0",
        MINIDEVIN_RATE_LIMIT_ANONYMOUS="0",
        MINIDEVIN_LOG_LEVEL="warning",
        MINIDEVIN_LOG_FORMAT="json",
        MINIDEVIN_JWT_SECRET="r" * 40,
    )
    serve = [
        "-m",
        "minidevin.cli",
        "serve",
        "--port",
        str(real_port),
        "--data-dir",
        str(base / "data"),
    ]
    real = spawn(serve, base / "serve.log", env)
    bare: subprocess.Popen[bytes] | None = None
    try:
        await wait_up(f"http://127.0.0.1:{real_port}/health", real)
        key, path, payload = await prepare(f"http://127.0.0.1:{real_port}", base / "work")
        (base / "body.json").write_bytes(payload)
        bare = spawn(
            ["-m", "bench.bare", "--port", str(bare_port), "--body", str(base / "body.json")],
            base / "bare.log",
        )
        await wait_up(f"http://127.0.0.1:{bare_port}{path}", bare)
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n\r\n").encode()
        rounds, seconds = (1, 1.5) if cfg.quick else (3, 4.0)
        tallies = {"real": Tally(), "bare": Tally()}
        for _ in range(rounds):
            await hammer(real_port, request, seconds, real.pid, tallies["real"])
            await hammer(bare_port, request, seconds, bare.pid, tallies["bare"])
    finally:
        stop(real)
        if bare is not None:
            stop(bare)
    got, ref = tallies["real"], tallies["bare"]
    same = json.loads(payload) == json.loads((base / "body.json").read_bytes())

    def note(t: Tally) -> str:
        return (
            f"{len(t.latencies)} requests, {t.errors} errors; CPU: client "
            f"{t.client_cpu / t.seconds:.0%}, server {t.server_cpu / t.seconds:.0%}"
        )

    common = f"{CONNECTIONS} keep-alive connections, {rounds} x {seconds:g}s"
    label = "bare aiohttp handler"
    ms = [1000 * percentile(t.latencies, q) for t in (got, ref) for q in (50, 99)]
    return [
        Row(
            "REST",
            "GET /api/sessions/{id} req/s",
            got.rate,
            "req/s",
            ref.rate,
            label,
            ">= 0.5 x bare",
            got.rate >= 0.5 * ref.rate and got.errors == 0,
            f"{common}; minidevin: {note(got)}; bare: {note(ref)}; same JSON: {same}",
        ),
        Row("REST", "GET /api/sessions/{id} p50 (ms)", ms[0], "ms", ms[2], label),
        Row("REST", "GET /api/sessions/{id} p99 (ms)", ms[1], "ms", ms[3], label),
    ]
