"""Task cost against repository size (issue 15, item 2).

A generated tree of 20,000 files (about 150 MB; `--quick`: 2,000), once committed
in git and once as a plain directory, and a one-file directory, in the same run.
Each task runs one `echo` and finishes (the in-process `ECHO` model), from
`POST` to its final status. Measured:

- task overhead on the git repository against the one-file directory, for its
  first task (its store starts from the repository's index, see
  `runtime/snapshots.py`, and is made when the session is: measured with the
  session a second old, and with session and task created at once as
  `minidevin run` does) and for the tasks after it (target: at most 100 ms more);
- the same on the plain directory, whose first task pays for hashing every file
  once, into the store its later tasks share (target for the later tasks);
- the data directory's growth per task on the git repository, the first task
  included (target: under 5 MB; the store made with the session counts in it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

from bench.common import Config, InProcessServer, Row, bench_settings, percentile
from bench.models import OneCommand
from minidevin.runtime.providers.registry import ProviderRegistry

FINAL = ("completed", "failed", "stopped")
ECHO = OneCommand("echo hi", "bench-echo")  # a task that runs one command and finishes


def generate(root: Path, files: int) -> None:
    """`files` files of about 7.5 KB in 100-file directories."""
    for n in range(files):
        directory = root / f"pkg{n // 100:03d}"
        if n % 100 == 0:
            directory.mkdir(parents=True)
        (directory / f"module{n}.py").write_text(f"# module {n}\n" + "x = 1234567890\n" * 500)


def commit(root: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}  # fmt: skip
    for args in (["init", "--quiet"], ["add", "-A"], ["commit", "--quiet", "-m", "tree"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


async def one_task(server: InProcessServer, session_id: str) -> float:
    """Seconds from `POST` to the final status."""
    assert server.http is not None
    started = time.perf_counter()
    task_id = await server.new_task(Path("."), ECHO.model_id, session_id)
    while True:
        async with server.http.get(f"/api/tasks/{task_id}", headers=server.auth) as response:
            if (await response.json())["status"] in FINAL:
                return time.perf_counter() - started
        await asyncio.sleep(0.005)  # (a poll of the benchmark's client, not a test's wait)


async def session_on(server: InProcessServer, directory: Path) -> str:
    assert server.http is not None
    body = {"name": directory.name, "working_directory": str(directory)}
    async with server.http.post("/api/sessions", json=body, headers=server.auth) as response:
        return str((await response.json())["id"])


async def run(cfg: Config) -> list[Row]:
    files, rounds = (2_000, 3) if cfg.quick else (20_000, 5)
    base = cfg.workdir / "snapshots"
    small, repo, at_once, plain = (base / name for name in ("one-file", "repo", "at-once", "plain"))
    small.mkdir(parents=True)
    (small / "a.txt").write_text("a\n")
    began = time.perf_counter()
    for tree in (repo, at_once):
        generate(tree, files)
        commit(tree)
    generate(plain, files)
    prepared = time.perf_counter() - began
    providers = ProviderRegistry({})
    ECHO.register(providers)
    data = base / "data"
    async with InProcessServer(bench_settings(data), providers) as server:
        sessions = {"small": await session_on(server, small)}
        sessions["plain"] = await session_on(server, plain)
        first_plain = await one_task(server, sessions["plain"])  # (right after its session)
        # a session and its first task at once (as `minidevin run` does)
        first_at_once = await one_task(server, await session_on(server, at_once))
        # a session created a second before its first task (time to type it)
        before = size_mb(data)  # (the store made with the session counts for its first task)
        sessions["repo"] = await session_on(server, repo)
        await asyncio.sleep(1.0)
        first_repo = await one_task(server, sessions["repo"])
        first_growth = size_mb(data) - before
        times: dict[str, list[float]] = {name: [] for name in sessions}
        growth: list[float] = []
        for _ in range(rounds):
            times["small"].append(await one_task(server, sessions["small"]))
            before = size_mb(data)
            times["repo"].append(await one_task(server, sessions["repo"]))
            growth.append(size_mb(data) - before)
            times["plain"].append(await one_task(server, sessions["plain"]))
    small_ms = percentile(times["small"], 50) * 1000
    repo_ms = percentile(times["repo"], 50) * 1000
    plain_ms = percentile(times["plain"], 50) * 1000
    tree = f"{files:,} files, {size_mb(plain):.0f} MB"
    note = (f"median of {rounds}; one-file directory {small_ms:.0f} ms; generated in "
            f"{prepared:.0f} s")  # fmt: skip
    first_ms, at_once_ms = first_repo * 1000, first_at_once * 1000
    return [
        Row("snapshots", f"task overhead, git repository of {tree}, first task, its session "
            "a second old", first_ms - small_ms, "ms", target="<= 100 ms",
            passed=first_ms - small_ms <= 100,
            notes=f"{note}; the task took {first_ms:.0f} ms (its store made when the session "
            f"was); the store: {first_growth:.1f} MB"),
        Row("snapshots", f"task overhead, git repository of {tree}, first task, created with "
            "its session", at_once_ms - small_ms, "ms", target="<= 100 ms",
            passed=at_once_ms - small_ms <= 100,
            notes=f"{note}; the task took {at_once_ms:.0f} ms (as `minidevin run`: the "
            "repository's index parsed and its trees packed before the task's first snapshot)"),
        Row("snapshots", f"task overhead, git repository of {tree}, later tasks",
            repo_ms - small_ms, "ms", target="<= 100 ms", passed=repo_ms - small_ms <= 100,
            notes=f"{note}; the task took {repo_ms:.0f} ms"),
        Row("snapshots", f"task overhead, plain directory of {tree}, later tasks",
            plain_ms - small_ms, "ms", target="<= 100 ms", passed=plain_ms - small_ms <= 100,
            notes=f"{note}; its first task {first_plain * 1000:.0f} ms (hashes every file)"),
        Row("snapshots", "data directory growth per task, git repository",
            max([*growth, first_growth]), "MB", target="< 5 MB",
            passed=max([*growth, first_growth]) < 5,
            notes=f"largest of {rounds + 1} tasks; median of the later ones "
            f"{percentile(growth, 50):.2f} MB; the first task's {first_growth:.1f} MB"),
    ]  # fmt: skip
