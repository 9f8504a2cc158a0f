"""MCP tool servers of a task (`runtime/mcp/servers.py`), against real servers.

The servers are `mcp_fixtures/tools_server.py` (written with the `mcp` SDK), run
over stdio with this interpreter (without the sandbox, and under bubblewrap as
another uid where it works) and over streamable HTTP on a loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import pids_running, process_gone, wait_for

from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.mcp.servers import McpProblem, McpTools, list_tools
from minidevin.runtime.tools.base import ToolContext, ToolResult
from minidevin.runtime.tools.environment import command_environment
from minidevin.runtime.tools.registry import default_registry
from minidevin.runtime.tools.sandbox import sandbox_status

FIXTURE = Path(__file__).parent / "mcp_fixtures" / "tools_server.py"
STATUS = sandbox_status()
NOBODY = 65534
AS_ROOT = os.geteuid() == 0
needs_bwrap = pytest.mark.skipif(
    not STATUS.works, reason=f"bubblewrap does not work on this machine: {STATUS.reason}"
)
TOOLS = ["add", "echo_env", "where", "fail", "uid", "slow", "die"]


def context(work: Path, **extra: Any) -> ToolContext:
    env = command_environment("mcp-test", extra.get("uid"))
    env["SESSION_SECRET"] = "s3cr3t"  # what a session's secrets look like in `env`
    return ToolContext(working_directory=work, env=env, task_id="mcp-test", **extra)


def fixture_server(name: str = "fx", *args: str, script: str = str(FIXTURE)) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": [script, *args], "env": {"EXTRA": "e"}}


def started(servers: list[dict[str, Any]], ctx: ToolContext, timeout: float = 15) -> McpTools:
    mcp = McpTools(servers, ctx, start_timeout=timeout, allow_private=False)
    assert mcp.start() == []
    return mcp


def call(mcp: McpTools, tool: str, ctx: ToolContext, **arguments: Any) -> ToolResult:
    return mcp.call(f"mcp__fx__{tool}", arguments, ctx)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


# -- stdio, without the sandbox -------------------------------------------------------------------


def test_tools_are_listed_with_their_schemas_and_called(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNTIME_OWN_KEY", "must-not-leak")
    ctx = context(work)
    mcp = started([fixture_server()], ctx)
    try:
        assert [info.name for info in mcp.tools] == [f"mcp__fx__{tool}" for tool in TOOLS]
        add = mcp.tools[0]
        assert (add.server, add.tool, add.description) == ("fx", "add", "Add two integers.")
        assert add.input_schema["required"] == ["a", "b"]
        assert add.input_schema["properties"]["a"]["type"] == "integer"
        assert call(mcp, "add", ctx, a=2, b=3) == ToolResult("5", True)
        assert call(mcp, "echo_env", ctx, name="SESSION_SECRET").output == "s3cr3t"
        assert call(mcp, "echo_env", ctx, name="EXTRA").output == "e"
        assert call(mcp, "echo_env", ctx, name="RUNTIME_OWN_KEY").output == "<unset>"
        assert call(mcp, "where", ctx).output == str(work)
        failed = call(mcp, "fail", ctx, reason="no luck")
        assert not failed.success and "no luck" in failed.output
        assert not call(mcp, "add", ctx, a="x", b=1).success  # the server's own check
        assert call(mcp, "add", ctx, a=1, b=1).output == "2"  # still up
        assert mcp.take_problems() == []
        assert set(mcp.start_seconds) == {"fx"}
    finally:
        mcp.close()


def test_registered_tools_run_through_the_registry(work: Path) -> None:
    ctx = context(work)
    mcp = started([fixture_server()], ctx)
    try:
        registry = default_registry()
        mcp.register(registry)
        assert "mcp__fx__add" in registry and registry.runs_in("mcp__fx__add") == "tools"
        schema = next(s for s in registry.schemas() if s["function"]["name"] == "mcp__fx__add")
        assert schema["function"]["parameters"]["required"] == ["a", "b"]
        executors = registry.executors()
        result = registry.execute("mcp__fx__add", json.dumps({"a": 4, "b": 5}), ctx, executors)
        assert result == ToolResult("9", True)
        refused = registry.execute("mcp__fx__add", json.dumps({"a": 4}), ctx, executors)
        assert not refused.success and "`b` is required" in refused.output
    finally:
        mcp.close()


def test_a_dead_server_fails_its_calls_and_is_reported_once(work: Path) -> None:
    ctx = context(work)
    mcp = started([fixture_server()], ctx)
    try:
        died = call(mcp, "die", ctx)
        assert not died.success and "exited with status 3" in died.output
        assert [p.server for p in mcp.take_problems()] == ["fx"]
        again = call(mcp, "add", ctx, a=1, b=2)
        assert not again.success and "not available" in again.output
        assert mcp.take_problems() == []
        assert mcp.tools == []
    finally:
        mcp.close()


def test_a_server_that_dies_while_idle_is_reported_once(work: Path) -> None:
    ctx = context(work)
    mcp = started([fixture_server()], ctx)
    try:
        pid = mcp._connections[0].process.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        [problem] = wait_for(mcp.take_problems, what="the death to be reported")
        assert problem.server == "fx" and "killed by signal 9 while idle" in problem.message
        assert mcp.take_problems() == [] and mcp.tools == []
        assert "killed by signal 9" in call(mcp, "add", ctx, a=1, b=2).output
    finally:
        mcp.close()


def test_servers_that_cannot_start_are_problems_and_the_others_work(work: Path) -> None:
    ctx = context(work)
    servers = [
        {"name": "missing", "command": "/nonexistent/mcp-server"},
        {"name": "quits", "command": "sh", "args": ["-c", "echo cannot go on >&2; exit 4"]},
        {"name": "mute", "command": "sleep", "args": ["30"]},  # never answers
        fixture_server(),
    ]
    mcp = McpTools(servers, ctx, start_timeout=3, allow_private=False)
    begun = time.monotonic()
    try:
        problems = {p.server: p.message for p in mcp.start()}
        assert time.monotonic() - begun < 3 + 1.5
        assert set(problems) == {"missing", "quits", "mute"}
        assert "/nonexistent/mcp-server" in problems["missing"]
        assert "No such file" in problems["missing"]
        assert "exited with status 4" in problems["quits"] and "cannot go on" in problems["quits"]
        assert problems["mute"] == "did not start within 3 s"
        mute = mcp._connections[2].process.pid  # type: ignore[union-attr]
        wait_for(lambda: process_gone(mute), timeout=2, what="the mute server to be stopped")
        assert {info.server for info in mcp.tools} == {"fx"}
        assert call(mcp, "add", ctx, a=1, b=2).output == "3"
        assert mcp.take_problems() == []  # start() told them already
    finally:
        mcp.close()


def test_close_ends_the_servers_whole_process_group(work: Path) -> None:
    mark = f"300.{uuid.uuid4().int % 10**9}"  # a child the server leaves behind
    server = {
        "name": "fx",
        "command": "sh",
        "args": ["-c", f'sleep {mark} & exec "{sys.executable}" "{FIXTURE}"'],
    }
    ctx = context(work)
    mcp = started([server], ctx)
    pid = mcp._connections[0].process.pid  # type: ignore[union-attr]
    assert pids_running(f"sleep {mark}") and not process_gone(pid)
    begun = time.monotonic()
    mcp.close()
    assert time.monotonic() - begun < 2.5
    assert process_gone(pid)
    wait_for(lambda: not pids_running(f"sleep {mark}"), timeout=2, what="the child to go")
    mcp.close()  # idempotent
    assert not call(mcp, "add", ctx, a=1, b=2).success


def test_a_stop_of_the_task_ends_a_slow_call_promptly(work: Path) -> None:
    ctx = context(work, cancel=CancelToken())
    mcp = started([fixture_server()], ctx)
    outcome: list[object] = []

    def slow_call() -> None:
        try:
            outcome.append(call(mcp, "slow", ctx, seconds=60, mark="started"))
        except Cancelled as exc:
            outcome.append(exc)

    caller = threading.Thread(target=slow_call)
    try:
        caller.start()
        wait_for((work / "started").exists, what="the slow call to run")
        begun = time.monotonic()
        ctx.cancel.cancel()
        caller.join(timeout=5)
        assert time.monotonic() - begun < 1
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    finally:
        mcp.close()


def test_a_call_that_times_out_fails_and_stops_the_server(work: Path) -> None:
    ctx = context(work, default_timeout=0.5)
    mcp = started([fixture_server()], ctx)
    try:
        timed_out = call(mcp, "slow", ctx, seconds=60)
        assert not timed_out.success and "timed out after 0.5 s" in timed_out.output
        assert [p.server for p in mcp.take_problems()] == ["fx"]
        pid = mcp._connections[0].process.pid  # type: ignore[union-attr]
        wait_for(lambda: process_gone(pid), timeout=3, what="the server to be stopped")
    finally:
        mcp.close()


# -- stdio, in the sandbox ------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_sandboxed_server_runs_in_the_workspace_as_the_task_uid(work: Path, online: bool) -> None:
    shutil.copy(FIXTURE, work / "tools_server.py")  # the sandbox sees only the workspace
    uid = NOBODY if AS_ROOT else None
    if AS_ROOT:
        os.chown(work, NOBODY, NOBODY)
    ctx = context(work, sandbox=True, network=online, uid=uid, gid=uid)
    mcp = started([fixture_server(script="tools_server.py")], ctx)
    try:
        assert call(mcp, "where", ctx).output == str(work)
        assert call(mcp, "uid", ctx).output == str(uid if AS_ROOT else os.getuid())
        assert call(mcp, "echo_env", ctx, name="SESSION_SECRET").output == "s3cr3t"
        assert call(mcp, "add", ctx, a=20, b=22).output == "42"
        pid = mcp._connections[0].process.pid  # type: ignore[union-attr]
    finally:
        mcp.close()
    assert process_gone(pid)


@needs_bwrap
def test_sandboxed_server_that_cannot_start_says_why(work: Path) -> None:
    uid = NOBODY if AS_ROOT else None
    ctx = context(work, sandbox=True, network=False, uid=uid, gid=uid)
    servers = [fixture_server()]  # the script lies outside the workspace: not in the sandbox
    tools, problems = list_tools(servers, ctx, start_timeout=10, allow_private=False)
    assert tools == []
    [problem] = problems
    assert problem.server == "fx" and "exited with status" in problem.message
    assert "tools_server.py" in problem.message  # Python's own complaint, from stderr


# -- streamable HTTP --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    server = subprocess.Popen(
        [sys.executable, str(FIXTURE), "http"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.kill()
        server.wait()


def test_http_server_on_a_loopback_address_is_refused_by_default(work: Path, http_url: str) -> None:
    servers = [{"name": "remote", "url": http_url}]
    tools, problems = list_tools(servers, context(work), start_timeout=10, allow_private=False)
    assert tools == []
    [problem] = problems
    assert problem.server == "remote"
    assert "127.0.0.1 is a loopback address" in problem.message
    assert "mcp_allow_private" in problem.message


def test_http_server_allowed_with_the_flag(work: Path, http_url: str) -> None:
    ctx = context(work)
    servers = [{"name": "fx", "url": http_url, "headers": {"Authorization": "Bearer t"}}]
    mcp = McpTools(servers, ctx, start_timeout=10, allow_private=True)
    try:
        assert mcp.start() == []
        assert [info.tool for info in mcp.tools] == TOOLS
        assert call(mcp, "add", ctx, a=2, b=2) == ToolResult("4", True)
        assert not call(mcp, "fail", ctx).success
    finally:
        mcp.close()


def test_http_server_that_is_not_there(work: Path) -> None:
    with socket_port() as port:
        servers = [{"name": "gone", "url": f"http://127.0.0.1:{port}/mcp"}]
        tools, problems = list_tools(servers, context(work), start_timeout=10, allow_private=True)
    assert tools == []
    assert problems == [McpProblem("gone", problems[0].message)]
    assert f"http://127.0.0.1:{port}/mcp" in problems[0].message


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound, not listening, while in use)."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield int(bound.getsockname()[1])


def test_a_secret_cut_in_two_by_the_output_limit_leaves_no_part_of_it() -> None:
    import mcp_types

    from minidevin.runtime.mcp.connection import _as_result
    from minidevin.runtime.redaction import Redactor

    text = "a" * 95 + "SECRETVALUE" + "b" * 95  # the middle cut falls inside the value
    answer = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)])
    output = _as_result(answer, 200, Redactor({"S": "SECRETVALUE"})).output
    assert "omitted" in output and "SECRE" not in output and "VALUE" not in output


async def test_an_http_server_is_reached_at_the_address_that_was_checked(http_url: str) -> None:
    """The name is not looked up again after the check: `pinned.invalid` (which no DNS
    answers) reaches the checked address, with its own name in `Host`."""
    import httpx2

    from minidevin.runtime.mcp.connection import PinnedTransport

    port = http_url.split(":")[2].split("/")[0]
    transport = PinnedTransport("pinned.invalid", "127.0.0.1")
    async with httpx2.AsyncClient(transport=transport, timeout=10) as client:
        answer = await client.get(f"http://pinned.invalid:{port}/mcp")
    assert answer.status_code < 500  # the fixture server answered (its own 4xx for a GET)
    assert answer.request.headers["Host"] == f"pinned.invalid:{port}"
