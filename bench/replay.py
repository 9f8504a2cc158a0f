"""Late subscribers to a long task: its history streamed in pages (issue 12, item 5).

A task whose log holds 110,000 events (a status, then `token`s, not ended) is
committed through the store; then 10 WebSocket subscribers connect at once
and read the whole history. Measured from a client process of its own (so its
work never shares the server's GIL): each socket's time to its first event,
the time to read the whole history, `/health` round trips polled every 20 ms
meanwhile, and the server's RSS (from /proc) against its value just before.
Targets: first event within 200 ms, `/health` p99 under 100 ms, RSS growth
under 50 MiB.

`python -m bench.replay` (no arguments, config on stdin) is that client.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import REPO, Config, InProcessServer, Row, bench_settings, percentile, rss_mib

TASK_ID = "bench-replay-task"


async def write_log(server: InProcessServer, workdir: Path, count: int) -> None:
    from minidevin.runtime.events import Event, utc_now
    from minidevin.runtime.schemas import TaskRequest

    assert server.http is not None
    workdir.mkdir(parents=True, exist_ok=True)
    body = {"name": "replay", "working_directory": str(workdir)}
    async with server.http.post("/api/sessions", json=body, headers=server.auth) as response:
        session_id = (await response.json())["id"]
    store = server.runtime.store
    request = TaskRequest(description="a long task")
    await store.insert_task(TASK_ID, session_id, request, "gpt-4o", 1000, utc_now())
    now = utc_now()
    store.append(Event(TASK_ID, 1, "status", {"status": "running"}, now))
    for seq in range(2, count + 1):
        store.append(Event(TASK_ID, seq, "token", {"content": f"word {seq} "}, now))
        if seq % 10_000 == 0:
            await store.flush()
    await store.flush()


async def run(cfg: Config) -> list[Row]:
    events, subscribers = (11_000, 3) if cfg.quick else (110_000, 10)
    base = cfg.workdir / "replay"
    async with InProcessServer(bench_settings(base / "data"), _no_providers()) as server:
        await write_log(server, base / "work", events)
        gc.collect()
        before = rss_mib()
        config = {
            "urls": [server.ws_url(TASK_ID)] * subscribers,
            "health": f"{server.url}/health",
            "pid": os.getpid(),
            "events": events,
            "timeout": 300,
        }
        poller = await _spawn({**config, "mode": "health"})
        sockets = await _spawn({**config, "mode": "sockets"})
        try:
            out, _ = await asyncio.wait_for(sockets.communicate(), 330)
            assert poller.stdin is not None
            poller.stdin.write(b"stop\n")
            polled, _ = await asyncio.wait_for(poller.communicate(), 30)
        finally:
            for process in (poller, sockets):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    got = {**json.loads(out), **json.loads(polled)}
    first_ms = max(got["first_ms"])
    health_p99 = percentile(got["health_ms"], 99)
    growth = got["peak_rss_mib"] - before
    note = (
        f"{subscribers} late subscribers x {events:,} events; {got['complete']}/{subscribers} "
        f"read all in order; whole history read in {max(got['done_ms']) / 1000:.1f} s (slowest); "
        f"/health p50 {percentile(got['health_ms'], 50):.1f} ms over {len(got['health_ms'])} "
        f"polls, max {max(got['health_ms'], default=float('nan')):.0f} ms; "
        f"RSS {before:.0f} -> {got['peak_rss_mib']:.0f} MiB"
    )
    name = f"{subscribers} late subscribers, {events:,} events"
    return [
        Row(
            "replay",
            f"{name}: first event (slowest)",
            first_ms,
            "ms",
            target="< 200 ms",
            passed=first_ms < 200,
            notes=note,
        ),
        Row(
            "replay",
            f"{name}: /health p99",
            health_p99,
            "ms",
            target="< 100 ms",
            passed=health_p99 < 100,
        ),
        Row(
            "replay",
            f"{name}: server RSS growth",
            growth,
            "MiB",
            target="< 50 MiB",
            passed=growth < 50,
        ),
    ]


async def _spawn(config: dict[str, Any]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.replay",
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(config).encode() + b"\n")
    await process.stdin.drain()
    return process


def _no_providers() -> Any:
    from minidevin.runtime.providers.registry import ProviderRegistry

    return ProviderRegistry({})


# -- the client, as its own process ----------------------------------------------------------


def _rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _health(url: str) -> float:
    parts = urlsplit(url)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
    )
    await reader.read()
    writer.close()
    return (time.perf_counter() - started) * 1000


async def health(config: dict[str, Any]) -> dict[str, Any]:
    """Poll `/health` every 20 ms and sample the server's RSS until told to stop."""
    stop = asyncio.create_task(asyncio.to_thread(sys.stdin.readline))
    rounds: list[float] = []
    peak = _rss_of(config["pid"])
    while not stop.done():
        rounds.append(await _health(config["health"]))
        peak = max(peak, _rss_of(config["pid"]))
        await asyncio.sleep(0.02)
    return {"health_ms": rounds, "peak_rss_mib": peak}


async def sockets(config: dict[str, Any]) -> dict[str, Any]:
    from bench.wsclient import RawSocket

    started = time.perf_counter_ns()
    states: list[dict[str, Any]] = []

    async def one() -> None:
        state: dict[str, Any] = {"first": None, "seqs": 0, "ordered": True, "done": None}

        def on_text(payload: bytes, received: int) -> None:
            seq = json.loads(payload)["seq"]
            if state["first"] is None:
                state["first"] = (received - started) / 1e6
            state["ordered"] = state["ordered"] and seq == state["seqs"] + 1
            state["seqs"] = seq
            if seq == config["events"]:
                state["done"] = (received - started) / 1e6
                socket.close()

        states.append(state)
        socket = await RawSocket.connect(config["urls"][0], on_text)
        await socket.closed

    await asyncio.wait_for(asyncio.gather(*(one() for _ in config["urls"])), config["timeout"])
    return {
        "first_ms": [s["first"] for s in states],
        "done_ms": [s["done"] for s in states],
        "complete": sum(1 for s in states if s["ordered"] and s["seqs"] == config["events"]),
    }


if __name__ == "__main__":
    settings = json.loads(sys.stdin.readline())
    main = health if settings["mode"] == "health" else sockets
    print(json.dumps(asyncio.run(main(settings))), flush=True)
