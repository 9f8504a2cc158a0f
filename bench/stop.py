"""Item 5: `POST /api/tasks/{id}/stop` to the final `stopped` event while `sleep 30` runs.

Server: `Runtime` + `create_app` on this process's loop (the figure is 100s of
ms against a 200 ms target, so a shared loop with the client costs nothing
worth separating). Model: the in-process `SleepCommand` (a `terminal` call
running `sleep 30`). Client: aiohttp in this process; per stop it opens the
task's WebSocket, waits for the `tool_call` event and for the `sleep` process
to exist, then times the POST to the `stopped` event. Baseline: killing a
`bash -c 'sleep 30'` process group directly (os.killpg + wait), the floor of
any stop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from typing import Any

from bench.common import Config, InProcessServer, Row, bench_settings, descendants, percentile
from bench.models import SleepCommand
from minidevin.runtime.providers.registry import ProviderRegistry


async def sleeping(timeout: float = 10) -> bool:
    """Wait until a `sleep` process runs below us."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "sleep" in descendants().values():
            return True
        await asyncio.sleep(0.005)
    return False


async def one_stop(server: InProcessServer, task_id: str) -> dict[str, Any]:
    assert server.http is not None
    async with server.http.ws_connect(server.ws_url(task_id)) as ws:
        async for message in ws:
            if message.json()["type"] == "tool_call":
                break
        if not await sleeping():
            raise RuntimeError("the sleep command never started")
        replied: list[float] = []

        async def post() -> None:
            assert server.http is not None
            async with server.http.post(f"/api/tasks/{task_id}/stop", headers=server.auth) as r:
                await r.read()
                replied.append(time.perf_counter())

        started = time.perf_counter()
        request = asyncio.create_task(post())
        final: dict[str, Any] = {}
        async for message in ws:
            data = message.json()
            if data["type"] == "status" and data["status"] in ("stopped", "completed", "failed"):
                final = {"status": data["status"], "at": time.perf_counter()}
                break
        await request
    return {
        "final": final.get("status"),
        "to_event": final.get("at", float("nan")) - started,
        "to_reply": replied[0] - started,
    }


def kill_floor() -> float:
    process = subprocess.Popen(["bash", "-c", "sleep 30"], start_new_session=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and descendants().get(process.pid) != "sleep":
        time.sleep(0.002)
    started = time.perf_counter()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return time.perf_counter() - started


async def run(cfg: Config) -> list[Row]:
    stops = 5 if cfg.quick else 50
    model = SleepCommand()
    providers = ProviderRegistry({})
    model.register(providers)
    base = cfg.workdir / "stop"
    (base / "work").mkdir(parents=True)
    results = []
    async with InProcessServer(bench_settings(base / "data"), providers) as server:
        assert server.http is not None
        body = {"name": "stop", "working_directory": str(base / "work")}
        async with server.http.post("/api/sessions", json=body, headers=server.auth) as r:
            session_id = (await r.json())["id"]
        for _ in range(stops):
            task_id = await server.new_task(base / "work", model.model_id, session_id)
            results.append(await one_stop(server, task_id))
        left = sum(1 for name in descendants().values() if name == "sleep")
    floors = [await asyncio.to_thread(kill_floor) for _ in range(stops)]
    to_event = [1000 * r["to_event"] for r in results]
    to_reply = [1000 * r["to_reply"] for r in results]
    stopped = sum(1 for r in results if r["final"] == "stopped")
    floor_ms = [1000 * f for f in floors]
    note = (
        f"{stops} stops, {stopped} ended `stopped`; POST reply p50 "
        f"{percentile(to_reply, 50):.1f} ms, p99 {percentile(to_reply, 99):.1f} ms; "
        f"sleep processes left: {left}"
    )
    label = "killpg + wait of bash sleep"
    return [
        Row(
            "stop",
            "stop -> `stopped` event p50 (ms)",
            percentile(to_event, 50),
            "ms",
            percentile(floor_ms, 50),
            label,
            notes=note,
        ),
        Row(
            "stop",
            "stop -> `stopped` event p99 (ms)",
            percentile(to_event, 99),
            "ms",
            percentile(floor_ms, 99),
            label,
            "p99 < 200 ms",
            percentile(to_event, 99) < 200 and stopped == stops and left == 0,
            note,
        ),
    ]
