"""Item 4: 1,000 live tasks in one process: peak RSS, threads, time to all running and done.

Each side runs in a fresh process (`python -m bench.scale`), so its RSS and
thread counts are its own. Runtime side: the `Runtime` facade (no HTTP: this
measures the process, not the server), one session per task, every task's
model turn the in-process `Blocking` model, waiting on an event until all run,
then released; max_concurrent_tasks = tasks, idle sessions stop after 0.5 s.
Baseline: the same number of bare pykka actors, one per task, each blocking on
one event in a message handler, then stopping.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pykka

from bench.common import REPO, Config, Row, bench_settings, os_threads, quiet_logging, rss_mib
from bench.models import Blocking, Counter
from minidevin.api import Runtime
from minidevin.runtime.providers.registry import ProviderRegistry


class Sampler(threading.Thread):
    """Peak RSS (MiB) and OS thread count, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.peak_rss = 0.0
        self.peak_threads = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak_rss = max(self.peak_rss, rss_mib())
            self.peak_threads = max(self.peak_threads, os_threads())


async def until(check: Any, timeout: float, step: float = 0.01) -> float:
    """Seconds until `check()` is true (inf on timeout)."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            return float("inf")
        await asyncio.sleep(step)
    return time.perf_counter() - started


async def runtime_side(tasks: int, workdir: Path) -> dict[str, Any]:
    model = Blocking()
    providers = ProviderRegistry({})
    model.register(providers)
    settings = bench_settings(
        workdir / "data", max_concurrent_tasks=tasks, session_idle_seconds=0.5
    )
    sampler = Sampler()
    sampler.start()
    async with Runtime(settings, providers=providers) as runtime:
        await runtime.owner(None)  # the local user, once (concurrent first calls race)
        threads0, rss0 = os_threads(), rss_mib()
        limit = asyncio.Semaphore(50)

        async def one(index: int) -> str:
            directory = workdir / f"w{index}"
            directory.mkdir(parents=True)
            async with limit:
                session = await runtime.create_session(f"s{index}", directory)
                task = await runtime.create_task(session.id, "wait", model=model.model_id)
            return task.id

        started = time.perf_counter()
        ids = await asyncio.gather(*(one(i) for i in range(tasks)))
        created = time.perf_counter() - started
        await until(lambda: model.running.value >= tasks, 600)
        running = time.perf_counter() - started
        threads_running, rss_running = os_threads(), rss_mib()
        released = time.perf_counter()
        model.release()
        details = await asyncio.gather(*(runtime.wait(task_id) for task_id in ids))
        finished = time.perf_counter() - released
        back = await until(lambda: os_threads() <= threads0, 60, 0.05)
        threads_after = os_threads()
    sampler.done.set()
    pykka.ActorRegistry.stop_all()
    return {
        "tasks": tasks,
        "created_s": created,
        "all_running_s": running,
        "all_finished_s": finished,
        "threads_back_s": back,
        "threads_before": threads0,
        "threads_running": threads_running,
        "threads_after": threads_after,
        "peak_threads": sampler.peak_threads,
        "rss_before_mib": rss0,
        "rss_running_mib": rss_running,
        "peak_rss_mib": sampler.peak_rss,
        "completed": sum(1 for d in details if d.status == "completed"),
    }


class Waiter(pykka.ThreadingActor):
    def __init__(self, running: Counter, release: threading.Event) -> None:
        super().__init__()
        self.running, self.release = running, release

    def on_receive(self, message: Any) -> None:
        self.running.add()
        self.release.wait()
        self.stop()


async def actors_side(tasks: int) -> dict[str, Any]:
    running, release = Counter(), threading.Event()
    sampler = Sampler()
    sampler.start()
    threads0, rss0 = os_threads(), rss_mib()
    started = time.perf_counter()
    refs = [Waiter.start(running, release) for _ in range(tasks)]
    for ref in refs:
        ref.tell("wait")
    await until(lambda: running.value >= tasks, 600)
    all_running = time.perf_counter() - started
    release.set()
    finished = await until(lambda: not any(ref.is_alive() for ref in refs), 120)
    back = await until(lambda: os_threads() <= threads0, 60, 0.05)
    sampler.done.set()
    return {
        "tasks": tasks,
        "all_running_s": all_running,
        "all_finished_s": finished,
        "threads_back_s": back,
        "threads_before": threads0,
        "threads_after": os_threads(),
        "peak_threads": sampler.peak_threads,
        "rss_before_mib": rss0,
        "peak_rss_mib": sampler.peak_rss,
    }


async def spawn(side: str, tasks: int, workdir: Path) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.scale",
        side,
        "--tasks",
        str(tasks),
        "--workdir",
        str(workdir),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 900)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"bench.scale {side} exited with {process.returncode}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def run(cfg: Config) -> list[Row]:
    tasks = 100 if cfg.quick else 1000
    got = await spawn("runtime", tasks, cfg.workdir / "scale")
    ref = await spawn("actors", tasks, cfg.workdir / "scale-actors")
    label = f"{tasks} bare pykka actors"
    note = (
        f"{got['completed']}/{tasks} completed; create calls {got['created_s']:.1f}s; "
        f"threads {got['threads_before']} -> {got['threads_running']} running -> "
        f"{got['threads_after']} after ({got['threads_back_s']:.1f}s); RSS "
        f"{got['rss_before_mib']:.0f} -> {got['rss_running_mib']:.0f} MiB"
    )
    name = f"{tasks} tasks"
    return [
        Row(
            "scale",
            f"{name}: time until all run (s)",
            got["all_running_s"],
            "s",
            ref["all_running_s"],
            label,
            notes=note,
            extra={"runtime": got, "actors": ref},
        ),
        Row(
            "scale",
            f"{name}: time until all finish (s)",
            got["all_finished_s"],
            "s",
            ref["all_finished_s"],
            label,
        ),
        Row(
            "scale",
            f"{name}: peak RSS (MiB)",
            got["peak_rss_mib"],
            "MiB",
            ref["peak_rss_mib"],
            label,
            "< 1024 MiB",
            got["peak_rss_mib"] < 1024,
        ),
        Row(
            "scale",
            f"{name}: peak threads",
            got["peak_threads"],
            "threads",
            ref["peak_threads"],
            label,
        ),
        Row(
            "scale",
            f"{name}: threads after",
            got["threads_after"],
            "threads",
            got["threads_before"],
            "threads before",
            "back to baseline",
            got["threads_after"] <= got["threads_before"] and got["completed"] == tasks,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="one side of the scale benchmark")
    parser.add_argument("side", choices=("runtime", "actors"))
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    quiet_logging()
    if args.side == "runtime":
        result = asyncio.run(runtime_side(args.tasks, args.workdir))
    else:
        result = asyncio.run(actors_side(args.tasks))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
