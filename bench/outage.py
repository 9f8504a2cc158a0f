"""Issue 12 item 1: a full disk under a streaming task, measured (needs root: a tmpfs).

`python -m bench.outage [--seconds 60] [--retry 90] [--rate 100]`

An in-process server keeps its data directory on a 64 MiB tmpfs. One task
streams `--rate` tokens/s (`PacedTokens`, creation time in each token) to a
WebSocket subscriber, which reconnects with `?after=` when told the store is
unavailable (1011). Five seconds in, the disk is filled for `--seconds`, then
freed. Printed: tokens produced before, during and after the outage; the
longest the model was held on one token (the backpressure); events the store
held at the peak; the subscriber's and the database's `seq` gaps (both must be
0); how the task ended. With `--retry` below `--seconds`, the task stops with
`STORE_UNAVAILABLE` at the retry window instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import InProcessServer, bench_settings
from bench.models import PacedTokens
from minidevin.runtime.providers.registry import ProviderRegistry


def fill(path: Path) -> None:
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as filler:
        while block:
            try:
                filler.write(block)
            except OSError:
                block = block[: len(block) // 2]


async def subscribe(server: InProcessServer, task_id: str, seen: list[dict[str, Any]]) -> int:
    """Read the task to its end, reconnecting after a 1011; returns how many 1011s."""
    told = 0
    async with aiohttp.ClientSession() as http:
        while True:
            after = seen[-1]["seq"] if seen else 0
            async with http.ws_connect(f"{server.ws_url(task_id)}&after={after}") as ws:
                async for message in ws:
                    event = json.loads(message.data)
                    if "seq" in event:
                        seen.append(event)
            if ws.close_code != 1011:
                return told
            told += 1
            while server.runtime.hub.store_down is not None:
                await asyncio.sleep(0.2)


async def run(seconds: float, retry: float, rate: float) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="outage-"))
    data = scratch / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data)], check=True)
    try:
        model = PacedTokens(int(rate * (seconds + 20)), rate)
        providers = ProviderRegistry({})
        model.register(providers)
        settings = bench_settings(data, store_retry_seconds=retry)
        async with InProcessServer(settings, providers) as server:
            store = server.runtime.store
            task_id = await server.new_task(scratch / "work", model.model_id)
            seen: list[dict[str, Any]] = []
            reader = asyncio.create_task(subscribe(server, task_id, seen))
            model.gate.set()
            await asyncio.sleep(5)
            before = model.emitted.value
            fill(data / "filler")
            filled, peak = time.monotonic(), 0
            while time.monotonic() - filled < seconds:
                peak = max(peak, store.held_events)
                await asyncio.sleep(0.05)
            during = model.emitted.value - before
            (data / "filler").unlink()
            told = await asyncio.wait_for(reader, 60 + seconds)
        db = sqlite3.connect(data / "minidevin.sqlite3")
        with contextlib.closing(db):
            stored = [
                s for (s,) in db.execute("SELECT seq FROM events WHERE task_id = ?", (task_id,))
            ]
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
    created = [
        int(piece)
        for event in seen
        if event["type"] == "token"
        for piece in event["content"].split()
        if piece.isdigit()
    ]
    pauses = [b - a for a, b in itertools.pairwise(created)]
    seqs = [event["seq"] for event in seen]
    return {
        "outage_seconds": seconds,
        "retry_seconds": retry,
        "tokens_before": before,
        "tokens_during": during,
        "tokens_total": model.emitted.value,
        "tokens_received": len(created),
        "longest_model_pause_s": round(max(pauses, default=0) / 1e9, 2),
        "events_held_peak": peak,
        "subscriber_seq_gaps": sum(b - a - 1 for a, b in itertools.pairwise(seqs)),
        "database_seq_gaps": len(set(range(1, max(stored) + 1)) - set(stored)),
        "subscriber_told_1011": told,
        "ended": [(e["type"], e.get("code") or e.get("status")) for e in seen[-2:]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outage", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--retry", type=float, default=90.0)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.retry, args.rate)), indent=2))


if __name__ == "__main__":
    main()
