"""`python -m bench [--quick] [--only NAME[,NAME]] [--out PATH] [--keep]`: run, print, save."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pykka

from bench.common import REPO, Config, Row, descendants, machine, os_threads, quiet_logging

BENCHMARKS = {
    "rest": "bench.rest",  # item 1
    "latency": "bench.latency",  # items 2 and 6
    "fanout": "bench.fanout",  # item 3
    "stop": "bench.stop",  # item 5
    "rebuild": "bench.rebuild",  # issue 11: the log's size, a conversation rebuilt from it
    "replay": "bench.replay",  # issue 12 item 5: late subscribers to a long history
    "console": "bench.console",  # issue 14 item 5: the task page in a real browser
    "snapshots": "bench.snapshots",  # issue 15 item 2: task cost against repository size
    "mcp": "bench.mcp",  # issue 13: MCP server start-up per task
    "nodes": "bench.nodes",  # issue 16: one SQLite node against three and four nodes
    "scale": "bench.scale",  # item 4 (last: 1,000 tasks ending at once load the machine)
}
ALIASES = {"store": "latency"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    names = ", ".join([*BENCHMARKS, *ALIASES])
    parser.add_argument("--only", help=f"comma-separated benchmarks to run ({names})")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results.json",
        help="where to write the results as JSON (default bench/results.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser.parse_args(argv)


def selected(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    chosen: list[str] = []
    for raw in only.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {raw!r}; choose from {', '.join(BENCHMARKS)}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def number(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    header = ("benchmark", "figure", "value", "baseline", "ratio", "target", "result")
    lines = [header]
    for row in rows:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[row.passed]
        base = f"{row.baseline:.0f}" if row.unit == "threads" else number(row.baseline)
        baseline = "-" if row.baseline is None else f"{base} ({row.baseline_label})"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        value = f"{row.value:.0f}" if row.unit == "threads" else number(row.value)
        value = f"{value} {row.unit}"
        lines.append(
            (row.benchmark, row.figure, value, baseline, ratio, row.target or "-", verdict)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    ]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out)


def run_one(name: str, cfg: Config) -> list[Row]:
    module: Any = importlib.import_module(BENCHMARKS[name])
    try:
        return list(asyncio.run(module.run(cfg)))
    except Exception as exc:
        traceback.print_exc()
        return [Row(name, "error", float("nan"), "", passed=False, notes=repr(exc))]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    quiet_logging()
    names = selected(args.only)
    workdir = Path(tempfile.mkdtemp(prefix="minidevin-bench-"))
    cfg = Config(quick=args.quick, workdir=workdir)
    threads_before = os_threads()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    rows: list[Row] = []
    timings: dict[str, float] = {}
    load: dict[str, float] = {}  # 1-minute load average as each benchmark starts
    try:
        for name in names:
            load[name] = round(os.getloadavg()[0], 2)
            print(f"[bench] {name} (load average {load[name]}) ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            rows += run_one(name, cfg)
            timings[name] = round(time.perf_counter() - started, 1)
            print(f"[bench] {name} done in {timings[name]:.1f}s", file=sys.stderr, flush=True)
    finally:
        pykka.ActorRegistry.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    leftovers = {"threads": os_threads() - threads_before, "processes": descendants()}
    leftovers["python_threads"] = [t.name for t in threading.enumerate()][1:]
    print(table(rows))
    for row in rows:
        if row.notes:
            print(f"  {row.benchmark} / {row.figure}: {row.notes}")
    report = {
        "machine": {**machine(), "load_average_at_start": load_at_start},
        "quick": args.quick,
        "benchmarks": names,
        "seconds": timings,
        "load_average_at_benchmark_start": load,
        "rows": [row.as_dict() for row in rows],
        "leftovers": {**leftovers, "processes": list(leftovers["processes"].values())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(
        f"\nwritten: {args.out}  (machine: {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores, Python {report['machine']['python']})"
    )
    print(f"load average: {load_at_start} at start, {report['machine']['load_average']} at end")
    print(f"leftovers: {leftovers['threads']} threads, {len(leftovers['processes'])} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
