"""Item 3: one task streaming to 500 WebSocket subscribers.

Server: `Runtime` + `create_app` on this process's loop; model: the in-process
`PacedTokens` (50 tokens/s, creation time in each token). Client:
`bench.wsclient` in its own process holding all the sockets; it checks each
socket saw every seq from 1 to the final `completed` status. Baseline: a raw
aiohttp fan-out in this process (`bench.bare.Broadcast`: a ticker thread, one
serialization per token, `send_str` to every socket), same client, same
sockets, same rate.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bench.bare import Broadcast
from bench.common import (
    ClientProcess,
    Config,
    InProcessServer,
    Row,
    bench_settings,
    wait_until,
)
from bench.models import PacedTokens
from minidevin.runtime.providers.registry import ProviderRegistry

RATE = 50.0


async def runtime_fanout(cfg: Config, subscribers: int, seconds: float) -> dict[str, Any]:
    model = PacedTokens(int(RATE * seconds), RATE)
    providers = ProviderRegistry({})
    model.register(providers)
    base = cfg.workdir / "fanout"
    async with InProcessServer(bench_settings(base / "data"), providers) as server:
        task_id = await server.new_task(base / "work", model.model_id)
        await wait_until(lambda: model.waiting.value >= 1, 120, "the task to start")
        urls = [server.ws_url(task_id)] * subscribers
        client = await ClientProcess.start(
            {"mode": "events", "urls": urls, "timeout": seconds * 4 + 60, "ready_timeout": 120}
        )
        try:
            model.gate.set()
            return await client.result(seconds * 4 + 90)
        finally:
            await client.kill()


async def bare_fanout(subscribers: int, seconds: float) -> dict[str, Any]:
    broadcast = Broadcast(int(RATE * seconds), RATE)
    runner = web.AppRunner(broadcast.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    try:
        client = await ClientProcess.start(
            {"mode": "events", "urls": [url] * subscribers, "timeout": seconds * 4 + 60}
        )
        try:
            broadcast.go()
            result = await client.result(seconds * 4 + 90)
        finally:
            await client.kill()
        await broadcast.wait()
        return result
    finally:
        await runner.cleanup()


async def run(cfg: Config) -> list[Row]:
    subscribers, seconds = (50, 2.0) if cfg.quick else (500, 10.0)
    got = await runtime_fanout(cfg, subscribers, seconds)
    ref = await bare_fanout(subscribers, seconds)
    tokens = int(RATE * seconds)
    complete = got["complete"] == subscribers and got["tokens_min"] == tokens
    expected = subscribers * tokens
    delivered = got["latency_us"]["count"]
    note = (
        f"1 task x {RATE:g} tok/s x {tokens} tokens to {subscribers} sockets; "
        f"{got['complete']}/{subscribers} complete, {delivered}/{expected} tokens delivered; "
        f"bare: {ref['complete']}/{subscribers} complete; client CPU "
        f"{got['client_cpu']:.0%} (runtime), {ref['client_cpu']:.0%} (bare)"
    )
    label = f"raw aiohttp fan-out, {subscribers} sockets"
    p99 = got["latency_us"]["p99"] / 1000
    return [
        Row(
            "fan-out",
            f"{subscribers} subscribers: p50 (ms)",
            got["latency_us"]["p50"] / 1000,
            "ms",
            ref["latency_us"]["p50"] / 1000,
            label,
            notes=note,
        ),
        Row(
            "fan-out",
            f"{subscribers} subscribers: p99 (ms)",
            p99,
            "ms",
            ref["latency_us"]["p99"] / 1000,
            label,
            "all delivered, p99 < 100 ms",
            complete and p99 < 100,
            note,
            {"runtime": got, "bare": ref},
        ),
    ]
