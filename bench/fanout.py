"""Item 3: one task streaming to 500 WebSocket subscribers; issue 12 item 6: 150 at 600 tokens/s.

Server: `Runtime` + `create_app` on this process's loop; model: the in-process
`PacedTokens` (50 tokens/s, creation time in each token). Client:
`bench.wsclient` in its own process holding all the sockets; it checks each
socket saw every seq from 1 to the final `completed` status. Baseline: a raw
aiohttp fan-out in this process (`bench.bare.Broadcast`: a ticker thread, one
serialization per token, `send_str` to every socket), same client, same
sockets, same rate.

Issue 12 item 6 (`fast_stream`): 150 subscribers of one task streaming 600
tokens/s for 10 s, with token coalescing on (`MINIDEVIN_TOKEN_COALESCE_MS`,
default 20) and, as the "before" figure, off (0: one event a delta). A token's
lag is its creation time in the model to its arrival at a client (a coalesced
event carries several creation times: each counts); `/health` is polled every
20 ms from another process (`bench.replay`'s poller) during the stream.
Targets: lag p99 < 1 s, `/health` p99 < 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from aiohttp import web

from bench.bare import Broadcast
from bench.common import (
    ClientProcess,
    Config,
    InProcessServer,
    Row,
    bench_settings,
    percentile,
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


async def fast_stream(
    cfg: Config, subscribers: int, rate: float, seconds: float, window_ms: float
) -> dict[str, Any]:
    """One task at `rate` tokens/s to `subscribers` sockets; lag and `/health` round trips."""
    from bench.replay import _spawn  # its `/health` poller, a process of its own

    model = PacedTokens(int(rate * seconds), rate)
    providers = ProviderRegistry({})
    model.register(providers)
    base = cfg.workdir / f"fast-stream-{window_ms:g}"
    settings = bench_settings(base / "data", token_coalesce_ms=window_ms)
    async with InProcessServer(settings, providers) as server:
        task_id = await server.new_task(base / "work", model.model_id)
        await wait_until(lambda: model.waiting.value >= 1, 120, "the task to start")
        health = {"mode": "health", "health": f"{server.url}/health", "pid": os.getpid()}
        poller = await _spawn(health)  # (first: it polls while the sockets connect)
        urls = [server.ws_url(task_id)] * subscribers
        try:
            client = await ClientProcess.start(
                {"mode": "events", "urls": urls, "timeout": seconds * 6 + 60, "ready_timeout": 120}
            )
        except BaseException:
            poller.kill()
            await poller.wait()
            raise
        try:
            model.gate.set()
            got = await client.result(seconds * 6 + 90)
            assert poller.stdin is not None
            poller.stdin.write(b"stop\n")
            polled, _ = await asyncio.wait_for(poller.communicate(), 30)
        finally:
            await client.kill()
            if poller.returncode is None:
                poller.kill()
                await poller.wait()
        token_events = await server.runtime.store.events_page(task_id, 0, 1_000_000)
        got["token_events"] = sum(1 for e in token_events if e.type == "token")
    got["health_ms"] = json.loads(polled)["health_ms"]
    return got


def fast_stream_rows(label: str, got: dict[str, Any], subscribers: int, tokens: int) -> list[Row]:
    lag_p99 = got["latency_us"]["p99"] / 1e6
    health_p99 = percentile(got["health_ms"], 99)
    complete = got["complete"] == subscribers and got["tokens_min"] == tokens
    note = (
        f"{got['complete']}/{subscribers} complete, {got['token_events']} token events for "
        f"{tokens} tokens; lag p50 {got['latency_us']['p50'] / 1e6:.2f} s, max "
        f"{got['latency_us']['max'] / 1e6:.2f} s; /health p50 "
        f"{percentile(got['health_ms'], 50):.1f} ms over {len(got['health_ms'])} polls; "
        f"client CPU {got['client_cpu']:.0%}"
    )
    return [
        Row(
            "fan-out",
            f"{label}: lag p99",
            lag_p99,
            "s",
            target="< 1 s",
            passed=complete and lag_p99 < 1,
            notes=note,
            extra={k: v for k, v in got.items() if k != "health_ms"},
        ),
        Row(
            "fan-out",
            f"{label}: /health p99",
            health_p99,
            "ms",
            target="< 100 ms",
            passed=health_p99 < 100,
        ),
    ]


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
    rows = await run_fast_stream(cfg)
    return rows + await run_item3(cfg)


async def run_fast_stream(cfg: Config) -> list[Row]:
    """Issue 12 item 6: coalescing on (the default window), then off (the before figure)."""
    subscribers, rate, seconds = (50, 600.0, 2.0) if cfg.quick else (150, 600.0, 10.0)
    tokens = int(rate * seconds)
    rows: list[Row] = []
    for window_ms in (20.0, 0.0):
        got = await fast_stream(cfg, subscribers, rate, seconds, window_ms)
        label = f"{subscribers} subscribers x {rate:g} tok/s, coalesce {window_ms:g} ms"
        rows += fast_stream_rows(label, got, subscribers, tokens)
    return rows


async def run_item3(cfg: Config) -> list[Row]:
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
