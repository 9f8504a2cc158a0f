"""MCP servers through the real server: a stdio server (in the command sandbox where it
works) and one over streamable HTTP on loopback, written with the `mcp` SDK, whose tools
the scripted model calls; secrets reach the server and are masked in what it answers; a
server that cannot start or dies is an `MCP_SERVER_FAILED` error and the task goes on;
approvals; `GET /api/sessions/{id}/tools`; the servers stop with the task."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_helpers import User, expect_error, expect_json, serve, sign_up
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from test_approvals import events_of, get, status_is
from waiting import until

from minidevin.runtime.settings import Settings

FIXTURE = Path(__file__).parent / "mcp_fixtures" / "tools_server.py"
TOKEN = "tok-9f8e7d6c5b4a"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory holding the fixture server (so the sandbox shows it)."""
    directory = tmp_path / "work"
    directory.mkdir()
    shutil.copy(FIXTURE, directory / "tools_server.py")
    return directory


def stdio_server(name: str = "fx", marker: str = "") -> dict[str, Any]:
    args = ["tools_server.py", *([marker] if marker else [])]
    env = {"EXTRA": "e", "SERVER_TOKEN": "hidden-token-123"}
    return {"name": name, "command": sys.executable, "args": args, "env": env}


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    server = subprocess.Popen([sys.executable, str(FIXTURE), "http"], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        yield f"http://127.0.0.1:{int(server.stdout.readline())}/mcp"
    finally:
        server.kill()
        server.wait()


async def mcp_session(
    client: TestClient, user: User, work: Path, servers: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    body = {"name": "s", "working_directory": str(work), "mcp_servers": servers, **fields}
    return await expect_json(await client.post("/api/sessions", json=body, headers=user.key), 201)


async def run_task(client: TestClient, user: User, session_id: str) -> dict[str, Any]:
    url = f"/api/sessions/{session_id}/tasks"
    body = {"description": "use the tools", "model": "gpt-4o"}
    return await expect_json(await client.post(url, json=body, headers=user.key), 201)


def tool_names(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools", [])]


def processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


async def test_a_stdio_servers_tools_are_called_and_stop_with_the_task(
    scripted: ScriptedOpenAIServer, settings: Settings, work: Path
) -> None:
    marker = f"--marker-{uuid.uuid4()}"
    calls = [
        ("mcp__fx__add", {"a": 2, "b": 3}),
        ("mcp__fx__echo_env", {"name": "API_TOKEN"}),
        ("mcp__fx__echo_env", {"name": "EXTRA"}),
        ("mcp__fx__fail", {"reason": "nope"}),
        ("mcp__fx__echo_env", {"name": "SERVER_TOKEN"}),
    ]
    scripted.script([ScriptedTurn(tool_calls=calls), finish("used them")])
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        secret = {"name": "API_TOKEN", "value": TOKEN}
        await expect_json(await client.post("/api/secrets", json=secret, headers=user.key), 201)
        session = await mcp_session(
            client, user, work, [stdio_server(marker=marker)], secrets=["API_TOKEN"]
        )
        task = await run_task(client, user, session["id"])
        await until(lambda: status_is(client, user, task["id"], "completed"), 30)
        events = await events_of(client, user, task["id"])
        assert "error" not in [e["type"] for e in events], events
        results = [e for e in events if e["type"] == "tool_result"]
        assert [(r["tool"], r["output"], r["success"]) for r in results[:4]] == [
            ("mcp__fx__add", "5", True),
            ("mcp__fx__echo_env", "<secret:API_TOKEN>", True),  # it got the value; masked
            ("mcp__fx__echo_env", "e", True),
            ("mcp__fx__fail", results[3]["output"], False),
        ]
        assert "nope" in results[3]["output"]
        # a server's `env` value is hidden like a secret (short ones, like "e", are settings)
        assert results[4]["output"] == "<secret:fx.env.SERVER_TOKEN>"
        first = scripted.requests[0]
        assert {"mcp__fx__add", "mcp__fx__slow", "terminal"} <= set(tool_names(first))
        add = next(t for t in first["tools"] if t["function"]["name"] == "mcp__fx__add")
        assert set(add["function"]["parameters"]["properties"]) == {"a", "b"}
        assert TOKEN not in str(scripted.requests[1])  # the model never saw the value
        await until(lambda: processes_with(marker) == [], 10, "the server to stop")
        metrics = await (await client.get("/metrics")).text()
        assert 'tool="mcp"' in metrics and "mcp__fx__add" not in metrics  # (bounded labels)


async def test_servers_that_fail_are_errors_and_the_task_goes_on_without_them(
    scripted: ScriptedOpenAIServer, settings: Settings, work: Path, http_url: str
) -> None:
    scripted.script(
        [ScriptedTurn(tool_calls=[("mcp__fx__die", {})]), ScriptedTurn(text="fine"), finish()]
    )
    servers = [
        stdio_server(),
        {"name": "gone", "command": "/nonexistent/server"},
        {"name": "inward", "url": http_url},  # loopback: refused unless allowed
    ]
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await mcp_session(client, user, work, servers)
        task = await run_task(client, user, session["id"])
        await until(lambda: status_is(client, user, task["id"], "completed"), 30)
        events = await events_of(client, user, task["id"])
        errors = [e for e in events if e["type"] == "error"]
        assert all(e["code"] == "MCP_SERVER_FAILED" for e in errors), errors
        said = " ".join(e["error"] for e in errors)
        assert "'gone'" in said and "'inward'" in said and "loopback" in said
        assert "'fx'" in said  # it died during its call: said once, after the call
        assert [n for n in tool_names(scripted.requests[0]) if n.startswith("mcp__")] == [
            n for n in tool_names(scripted.requests[0]) if n.startswith("mcp__fx__")
        ]
        assert not [n for n in tool_names(scripted.requests[1]) if n.startswith("mcp__")]


async def test_an_http_server_on_loopback_when_allowed(
    scripted: ScriptedOpenAIServer, settings: Settings, work: Path, http_url: str
) -> None:
    settings = settings.model_copy(update={"mcp_allow_private": True})
    scripted.script([ScriptedTurn(tool_calls=[("mcp__web__add", {"a": 40, "b": 2})]), finish()])
    servers = [{"name": "web", "url": http_url, "headers": {"Authorization": "Bearer x"}}]
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await mcp_session(client, user, work, servers)
        task = await run_task(client, user, session["id"])
        await until(lambda: status_is(client, user, task["id"], "completed"), 30)
        events = await events_of(client, user, task["id"])
        result = next(e for e in events if e["type"] == "tool_result")
        assert (result["tool"], result["output"], result["success"]) == (
            "mcp__web__add",
            "42",
            True,
        )
        detail = await expect_json(
            await client.get(f"/api/sessions/{session['id']}", headers=user.key)
        )
        assert detail["mcp_servers"] == [
            {"name": "web", "transport": "http", "url": http_url,
             "headers": {"Authorization": "<hidden>"}}
        ]  # fmt: skip


async def test_mcp_calls_wait_for_approval_under_risky(
    scripted: ScriptedOpenAIServer, settings: Settings, work: Path
) -> None:
    scripted.script([ScriptedTurn(tool_calls=[("mcp__fx__add", {"a": 1, "b": 1})]), finish()])
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await mcp_session(client, user, work, [stdio_server()], approval_policy="risky")
        task = await run_task(client, user, session["id"])
        await until(lambda: status_is(client, user, task["id"], "waiting_approval"), 30)
        events = await events_of(client, user, task["id"])
        asked = next(e for e in events if e["type"] == "approval_request")
        assert asked["tool"] == "mcp__fx__add" and "tool_result" not in [e["type"] for e in events]
        url = f"/api/tasks/{task['id']}/approvals/{asked['call_id']}"
        await expect_json(await client.post(url, json={"decision": "approve"}, headers=user.key))
        await until(lambda: status_is(client, user, task["id"], "completed"), 30)
        assert (await get(client, user, task["id"]))["status"] == "completed"


async def test_the_session_tool_list(
    scripted: ScriptedOpenAIServer, settings: Settings, work: Path
) -> None:
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        servers = [stdio_server(), {"name": "gone", "command": "/nonexistent/server"}]
        session = await mcp_session(client, user, work, servers)
        url = f"/api/sessions/{session['id']}/tools"
        listed = await expect_json(await client.get(url, headers=user.key))
        by_name = {tool["name"]: tool for tool in listed["tools"]}
        assert by_name["terminal"]["source"] == "builtin"
        assert by_name["mcp__fx__add"]["source"] == "mcp"
        assert by_name["mcp__fx__add"]["server"] == "fx"
        assert set(by_name["mcp__fx__add"]["input_schema"]["properties"]) == {"a", "b"}
        assert [p["server"] for p in listed["problems"]] == ["gone"]
        other = await sign_up(client, "eve@example.com", "Eve")
        await expect_error(await client.get(url, headers=other.key), 404, "NOT_FOUND")
        plain = await mcp_session(client, user, work, [])
        listed = await expect_json(
            await client.get(f"/api/sessions/{plain['id']}/tools", headers=user.key)
        )
        assert [t["source"] for t in listed["tools"]] == ["builtin"] * 5


@pytest.mark.parametrize(
    "servers",
    [
        [{"name": "x", "command": "true", "env": {"LD_PRELOAD": "/tmp/evil.so"}}],
        [{"name": "x", "command": "true", "env": {"PATH": "/tmp"}}],
        [{"name": "x", "command": "true", "env": {"MINIDEVIN_TASK_ID": "other"}}],
        [{"name": "x", "command": "true", "env": {"A=B": "c"}}],
        [{"name": "a_", "command": "x"}],
        [{"name": "Bad", "command": "x"}],
        [{"name": "a__b", "command": "x"}],
        [{"name": "x", "command": "a", "url": "http://example.com/mcp"}],
        [{"name": "x", "url": "ftp://example.com"}],
        [{"name": "x", "command": "a"}, {"name": "x", "command": "b"}],
        [{"name": "x"}],
        "not a list",
    ],
)
async def test_bad_mcp_server_configurations_are_422(
    scripted: ScriptedOpenAIServer, settings: Settings, work: Path, servers: Any
) -> None:
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        body = {"name": "s", "working_directory": str(work), "mcp_servers": servers}
        answer = await client.post("/api/sessions", json=body, headers=user.key)
        await expect_error(answer, 422, "VALIDATION_ERROR")
