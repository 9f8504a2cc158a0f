"""MCP server start-up per task (issue 13): `McpTools.start()` with the test suite's
server (written with the `mcp` SDK), over stdio without the sandbox, over stdio in the
sandbox (as a task's commands run: its uid, no network), and over streamable HTTP on
loopback; then `close()`. Five runs each; the median and the range."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Config, Row, percentile

SERVER = REPO / "tests" / "mcp_fixtures" / "tools_server.py"
RUNS = 5


def _context(work: Path, sandbox: bool) -> Any:
    from minidevin.runtime.tools.base import ToolContext
    from minidevin.runtime.tools.environment import command_environment
    from minidevin.runtime.tools.sandbox import run_identity

    uid, gid = run_identity(work, 65534)
    return ToolContext(
        working_directory=work,
        env=command_environment("bench-mcp", uid),
        sandbox=sandbox,
        network=False,
        uid=uid if sandbox else None,
        gid=gid if sandbox else None,
        task_id="bench-mcp",
    )


def _time(servers: list[dict[str, Any]], context: Any) -> tuple[list[float], list[float]]:
    from minidevin.runtime.mcp.servers import McpTools

    starts, closes = [], []
    for _ in range(RUNS):
        mcp = McpTools(servers, context, start_timeout=30, allow_private=True)
        began = time.perf_counter()
        problems = mcp.start()
        started = time.perf_counter()
        mcp.close()
        closed = time.perf_counter()
        if problems:
            raise RuntimeError(f"the MCP server did not start: {problems}")
        starts.append((started - began) * 1000)
        closes.append((closed - started) * 1000)
    return starts, closes


def _row(name: str, starts: list[float], closes: list[float]) -> Row:
    return Row(
        "mcp",
        f"start-up, {name}",
        percentile(starts, 50),
        "ms",
        notes=f"{RUNS} runs: {min(starts):.0f}-{max(starts):.0f} ms; close median "
        f"{percentile(closes, 50):.0f} ms",
    )


async def run(cfg: Config) -> list[Row]:
    from minidevin.runtime.tools.sandbox import sandbox_status

    work = cfg.workdir / "mcp"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(SERVER, work / "tools_server.py")  # (inside the workspace: the sandbox shows it)
    work.chmod(0o755)
    stdio = [{"name": "fx", "command": sys.executable, "args": ["tools_server.py"]}]
    rows = [_row("stdio, no sandbox", *_time(stdio, _context(work, False)))]
    if sandbox_status().works:
        rows.append(_row("stdio, in the sandbox", *_time(stdio, _context(work, True))))
    http = subprocess.Popen([sys.executable, str(SERVER), "http"], stdout=subprocess.PIPE)
    try:
        assert http.stdout is not None
        url = f"http://127.0.0.1:{int(http.stdout.readline())}/mcp"
        servers = [{"name": "web", "url": url}]
        rows.append(_row("streamable HTTP on loopback", *_time(servers, _context(work, False))))
    finally:
        http.kill()
        http.wait()
    return rows
