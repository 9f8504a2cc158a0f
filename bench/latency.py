"""Items 2 and 6: token-to-WebSocket latency, and the store's event rate under that load.

Server: `Runtime` + `create_app` on this process's loop. Model: the in-process
`PacedTokens` (each token's text is its creation time in perf_counter ns,
taken on the ModelActor's thread; tokens are paced per task with a random
phase). Client: `bench.wsclient` in its own process (no shared GIL or loop),
one WebSocket per task; latency = receive time - creation time.
Baseline: a raw aiohttp WebSocket echo on loopback in this process, the same
client process, the same number of sockets at the same rate; its figure is
the round trip (two hops, against the runtime's one hop plus store commit).
Item 6 counts the store's committed events (its `on_events_committed` hook)
in the middle 60% of the 100-task run, against the tokens the models made
in the same window. Token coalescing is off here (one event a token), so the
figures are the runtime's own cost per event; the default 20 ms window trades
up to 20 ms of latency for far fewer events (the fan-out benchmark measures it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bench.bare import echo_app
from bench.common import (
    ClientProcess,
    Config,
    InProcessServer,
    Row,
    bench_settings,
    wait_until,
)
from bench.models import PacedTokens
from bench.store import sqlite_events_per_second, store_events_per_second, stored_events
from minidevin.runtime.providers.registry import ProviderRegistry


@dataclass
class Load:
    tasks: int
    rate: float
    seconds: float

    @property
    def tokens(self) -> int:
        return int(self.rate * self.seconds)


@dataclass
class StreamRun:
    client: dict[str, Any]
    committed_per_s: float
    emitted_per_s: float
    persisted_rows: int


async def stream(cfg: Config, load: Load, coalesce_ms: float = 0) -> StreamRun:
    model = PacedTokens(load.tokens, load.rate)
    providers = ProviderRegistry({})
    model.register(providers)
    base = cfg.workdir / f"latency-{load.tasks}-{coalesce_ms:g}"
    slots = max(8, load.tasks)  # (one bench user runs them all)
    settings = bench_settings(
        base / "data",
        max_concurrent_tasks=slots,
        max_tasks_per_user=slots,
        token_coalesce_ms=coalesce_ms,  # 0: one event a token (the runtime's own cost)
    )
    async with InProcessServer(settings, providers) as server:
        ids = await asyncio.gather(
            *(server.new_task(base / f"w{i}", model.model_id) for i in range(load.tasks))
        )
        # every task is running, its model waiting at the gate
        await wait_until(lambda: model.waiting.value >= load.tasks, 300, "the tasks to start")
        committed = [0]
        publish = server.runtime.store.on_events_committed

        def counting(events: list[Any]) -> None:
            committed[0] += len(events)
            publish(events)

        server.runtime.store.on_events_committed = counting
        config = {"mode": "events", "urls": [server.ws_url(i) for i in ids]}
        client = await ClientProcess.start({**config, "timeout": load.seconds * 3 + 30})
        try:
            model.gate.set()
            await asyncio.sleep(load.seconds * 0.2)
            first = (time.perf_counter(), committed[0], model.emitted.value)
            await asyncio.sleep(load.seconds * 0.6)
            last = (time.perf_counter(), committed[0], model.emitted.value)
            result = await client.result(load.seconds * 3 + 60)
        finally:
            await client.kill()
        stored = stored_events(server.runtime.settings.database_path)
    span = last[0] - first[0]
    return StreamRun(
        result,
        (last[1] - first[1]) / span,
        (last[2] - first[2]) / span,
        stored,
    )


async def echo(load: Load) -> dict[str, Any]:
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/echo"
    try:
        config = {"mode": "echo", "url": url, "sockets": load.tasks, "count": load.tokens}
        client = await ClientProcess.start(
            {**config, "rate": load.rate, "timeout": load.seconds * 3 + 30}
        )
        return await client.result(load.seconds * 3 + 60)
    finally:
        await runner.cleanup()


def _ms(result: dict[str, Any], key: str) -> float:
    return float(result["latency_us"][key]) / 1000


def _delivery(run: StreamRun, load: Load) -> str:
    c = run.client
    ok = c["complete"] == load.tasks and c["tokens_min"] == load.tokens
    return (
        f"{load.tasks} task(s) x {load.rate:g} tok/s x {load.tokens} tokens; "
        f"{c['complete']}/{load.tasks} streams complete{'' if ok else ' (LOSS)'}; "
        f"client CPU {c['client_cpu']:.0%}"
    )


async def run(cfg: Config) -> list[Row]:
    one = Load(1, 100, 2 if cfg.quick else 10)
    many = Load(20 if cfg.quick else 100, 50, 2 if cfg.quick else 10)
    rows: list[Row] = []
    for load, name in ((one, "1 task"), (many, f"{many.tasks} tasks")):
        got = await stream(cfg, load)
        base = await echo(load)
        p99, echo_p99 = _ms(got.client, "p99"), _ms(base, "p99")
        if load is one:
            target, passed = "p99 <= echo p99 + 2 ms", p99 <= echo_p99 + 2
        else:
            target, passed = "p99 < 50 ms", p99 < 50
        label = f"WS echo RTT, {load.tasks} socket(s)"
        note = f"{_delivery(got, load)} (runtime), {base['client_cpu']:.0%} (echo)"
        rows.append(
            Row(
                "event latency",
                f"{name}: p50 token->WS (ms)",
                _ms(got.client, "p50"),
                "ms",
                _ms(base, "p50"),
                label,
                notes=note,
            )
        )
        rows.append(
            Row(
                "event latency",
                f"{name}: p99 token->WS (ms)",
                p99,
                "ms",
                echo_p99,
                label,
                target,
                passed,
                note,
                {"runtime": got.client, "echo": base},
            )
        )
        if load is many:
            rows.append(
                Row(
                    "store",
                    f"events persisted/s under {name}",
                    got.committed_per_s,
                    "ev/s",
                    got.emitted_per_s,
                    "tokens emitted/s",
                    ">= 0.95 x emitted",
                    got.committed_per_s >= 0.95 * got.emitted_per_s,
                    f"middle 60% of the run; {got.persisted_rows} event rows in total",
                )
            )
    # the default: a turn's deltas within 20 ms are one event (latency up to the window)
    got = await stream(cfg, many, coalesce_ms=20)
    rows.append(
        Row(
            "event latency",
            f"{many.tasks} tasks, tokens coalesced (20 ms, the default): p99 (ms)",
            _ms(got.client, "p99"),
            "ms",
            None,
            "-",
            "p99 < 50 ms + the 20 ms window",
            _ms(got.client, "p99") < 70,
            f"{_delivery(got, many)}; p50 {_ms(got.client, 'p50'):.1f} ms",
        )
    )
    count = 20_000 if cfg.quick else 100_000
    capacity = await store_events_per_second(cfg.workdir / "capacity" / "store.db", count)
    raw = await asyncio.to_thread(
        sqlite_events_per_second, cfg.workdir / "capacity" / "raw.db", count
    )
    rows.append(
        Row(
            "store",
            "capacity, no load (events/s)",
            capacity,
            "ev/s",
            raw,
            "plain sqlite3, same batches",
            notes=f"{count} events fed from one thread",
        )
    )
    return rows
