"""Approvals through the real server: a call that waits has not run; approve and reject by
REST and WebSocket; the reason reaches the model; stop while waiting; a restart while
waiting, then resume, asks again; the read-only allowlist."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from direct_db import direct_database
from http_helpers import (
    User,
    expect_error,
    expect_json,
    next_message,
    read_until,
    serve,
    sign_up,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from waiting import until

from minidevin.runtime.approvals import command_risk, needs_approval
from minidevin.runtime.settings import Settings

TOUCH = ("terminal", {"command": "touch made.txt"})


async def session_with(
    client: TestClient, user: User, work: Path, policy: str = "risky"
) -> dict[str, Any]:
    body = {"name": "s", "working_directory": str(work), "approval_policy": policy}
    return await expect_json(await client.post("/api/sessions", json=body, headers=user.key), 201)


async def start_task(
    client: TestClient, user: User, session_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"description": "make a file", "model": "gpt-4o", **fields}
    url = f"/api/sessions/{session_id}/tasks"
    return await expect_json(await client.post(url, json=body, headers=user.key), 201)


async def events_of(client: TestClient, user: User, task_id: str) -> list[dict[str, Any]]:
    """The task's whole log so far, as its WebSocket replays it."""
    async with client.ws_connect(ws_path(task_id, user.token)) as ws:
        last = (await get(client, user, task_id))["status"]
        messages = []
        while True:
            message = await next_message(ws)
            messages.append(message)
            if message["type"] == "status" and message["status"] == last:
                return messages


async def get(client: TestClient, user: User, task_id: str) -> dict[str, Any]:
    return await expect_json(await client.get(f"/api/tasks/{task_id}", headers=user.bearer))


async def status_is(client: TestClient, user: User, task_id: str, status: str) -> bool:
    return (await get(client, user, task_id))["status"] == status


async def decide(client: TestClient, user: User, task_id: str, call_id: str, **body: Any) -> Any:
    return await client.post(
        f"/api/tasks/{task_id}/approvals/{call_id}", json=body, headers=user.key
    )


def tool_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m.get("role") == "tool"]


async def test_a_waiting_command_has_not_run_until_approved_over_rest(
    scripted: ScriptedOpenAIServer, settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    scripted.script([ScriptedTurn(tool_calls=[TOUCH]), finish("made it")])
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await session_with(client, user, work)
        task = await start_task(client, user, session["id"])
        await until(lambda: status_is(client, user, task["id"], "waiting_approval"), 10)
        events = await events_of(client, user, task["id"])
        request = next(e for e in events if e["type"] == "approval_request")
        assert request["tool"] == "terminal"
        assert request["input"] == {"command": "touch made.txt"}
        assert "touch" in request["reason"]
        assert not (work / "made.txt").exists()  # waiting: it has not run
        assert len(scripted.requests) == 1  # and the model is not asked meanwhile

        await expect_error(
            await decide(client, user, task["id"], "nope", decision="approve"), 404, "NOT_FOUND"
        )
        decided = await expect_json(
            await decide(client, user, task["id"], request["call_id"], decision="approve")
        )
        assert decided == {"call_id": request["call_id"], "decision": "approve"}
        await until(lambda: status_is(client, user, task["id"], "completed"), 10)
        assert (work / "made.txt").exists()
        again = await decide(client, user, task["id"], request["call_id"], decision="reject")
        await expect_error(again, 409, "CONFLICT")
        events = await events_of(client, user, task["id"])
        kinds = [e["type"] for e in events]
        decision = next(e for e in events if e["type"] == "approval_decision")
        assert decision["call_id"] == request["call_id"] and decision["decision"] == "approve"
        assert kinds.index("approval_request") < kinds.index("approval_decision")
        assert kinds.index("approval_decision") < kinds.index("tool_result")
        assert [e["status"] for e in events if e["type"] == "status"] == [
            "queued", "running", "waiting_approval", "running", "completed"
        ]  # fmt: skip
        # another user can neither see nor decide it
        other = await sign_up(client, "eve@example.com", "Eve")
        await expect_error(
            await decide(client, other, task["id"], "x", decision="approve"), 404, "NOT_FOUND"
        )


async def test_a_rejection_over_the_websocket_reaches_the_model_with_its_reason(
    scripted: ScriptedOpenAIServer, settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    scripted.script([ScriptedTurn(tool_calls=[TOUCH]), finish("did not")])
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await session_with(client, user, work)
        task = await start_task(client, user, session["id"])
        async with client.ws_connect(ws_path(task["id"], user.token)) as ws:
            seen = await read_until(ws, lambda m: m["type"] == "approval_request")
            call_id = seen[-1]["call_id"]
            await ws.send_json({"type": "reject", "call_id": "unknown-call"})
            error = await read_until(ws, lambda m: m["type"] == "error")
            assert error[-1]["code"] == "NOT_FOUND", error[-1]
            await ws.send_json({"type": "reject", "call_id": call_id, "reason": "no files"})
            rest = await read_until(
                ws, lambda m: m["type"] == "status" and m["status"] == "completed"
            )
        decision = next(m for m in rest if m["type"] == "approval_decision")
        assert decision["decision"] == "reject" and decision["reason"] == "no files"
        result = next(m for m in rest if m["type"] == "tool_result")
        assert result["success"] is False and "Rejected" in result["output"]
        assert not (work / "made.txt").exists()
        assert any("no files" in text for text in tool_messages(scripted.requests[1]))


async def test_read_only_commands_run_at_once_and_the_task_policy_overrides_the_session(
    scripted: ScriptedOpenAIServer, settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("hello\n")
    reads = ("terminal", {"command": "ls && cat a.txt | grep hello"})
    scripted.script(
        [ScriptedTurn(tool_calls=[reads]), finish(), ScriptedTurn(tool_calls=[TOUCH]), finish()]
    )
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await session_with(client, user, work)
        first = await start_task(client, user, session["id"])
        await until(lambda: status_is(client, user, first["id"], "completed"), 10)
        events = await events_of(client, user, first["id"])
        assert "approval_request" not in [e["type"] for e in events]
        assert "hello" in next(e for e in events if e["type"] == "tool_result")["output"]
        # the session says risky; this task says never: nothing waits
        second = await start_task(client, user, session["id"], approval_policy="never")
        await until(lambda: status_is(client, user, second["id"], "completed"), 10)
        assert (work / "made.txt").exists()
        assert (await get(client, user, second["id"]))["approval_policy"] == "never"
        detail = await expect_json(
            await client.get(f"/api/sessions/{session['id']}", headers=user.key)
        )
        assert detail["approval_policy"] == "risky"


async def test_always_waits_for_an_editor_view_and_calls_are_decided_in_order(
    scripted: ScriptedOpenAIServer, settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("hello\n")
    view = ("editor", {"command": "view", "path": "a.txt"})
    scripted.script([ScriptedTurn(tool_calls=[view, ("terminal", {"command": "ls"})]), finish()])
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await session_with(client, user, work, "always")
        task = await start_task(client, user, session["id"])
        async with client.ws_connect(ws_path(task["id"], user.token)) as ws:
            first = (await read_until(ws, lambda m: m["type"] == "approval_request"))[-1]
            assert first["tool"] == "editor"
            await ws.send_json({"type": "approve", "call_id": first["call_id"]})
            later = await read_until(ws, lambda m: m["type"] == "approval_request")
            assert later[-1]["tool"] == "terminal"  # the second only once the first is decided
            results = [m for m in later if m["type"] == "tool_result"]
            assert [r["call_id"] for r in results] == [first["call_id"]]
            await ws.send_json({"type": "approve", "call_id": later[-1]["call_id"]})
            await read_until(ws, lambda m: m["type"] == "status" and m["status"] == "completed")


async def test_stop_while_waiting_ends_the_task_and_a_late_decision_is_a_conflict(
    scripted: ScriptedOpenAIServer, settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    scripted.script([ScriptedTurn(tool_calls=[TOUCH]), finish()])
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await session_with(client, user, work)
        task = await start_task(client, user, session["id"])
        await until(lambda: status_is(client, user, task["id"], "waiting_approval"), 10)
        events = await events_of(client, user, task["id"])
        call_id = next(e for e in events if e["type"] == "approval_request")["call_id"]
        stopped = await expect_json(
            await client.post(f"/api/tasks/{task['id']}/stop", headers=user.key)
        )
        assert stopped["status"] == "stopped"
        await expect_error(
            await decide(client, user, task["id"], call_id, decision="approve"), 409, "CONFLICT"
        )
        assert not (work / "made.txt").exists()


async def test_bad_decisions_are_refused_with_the_api_error_format(
    scripted: ScriptedOpenAIServer, settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    scripted.script([finish()])
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        session = await session_with(client, user, work)
        task = await start_task(client, user, session["id"])
        for body in ({"decision": "maybe"}, {}, {"decision": "approve", "reason": 3}):
            await expect_error(
                await decide(client, user, task["id"], "c", **body), 422, "VALIDATION_ERROR"
            )
        bad = {"name": "s", "working_directory": str(work), "approval_policy": "sometimes"}
        await expect_error(
            await client.post("/api/sessions", json=bad, headers=user.key), 422, "VALIDATION_ERROR"
        )


async def test_a_pending_approval_is_asked_again_after_kill_9_and_resume(
    scripted: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    echo = ("terminal", {"command": "echo after > after.txt"})
    scripted.script([ScriptedTurn(tool_calls=[TOUCH, echo]), finish("both")])
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": scripted.base_url,
           "MINIDEVIN_SANDBOX": "off"}  # fmt: skip
    account = {"email": "k@example.com", "password": "password123", "name": "K"}
    server = ServeProcess(tmp_path / "data", env, database_url)
    try:
        server.request("POST", "/api/auth/register", account)
        token = server.request("POST", "/api/auth/login", account)["access_token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = {"name": "s", "working_directory": str(work), "approval_policy": "risky"}
        session = server.request("POST", "/api/sessions", body, auth)
        task = server.request(
            "POST", f"/api/sessions/{session['id']}/tasks", {"description": "two files"}, auth
        )
        path = f"/api/tasks/{task['id']}"
        await until(lambda: server.request("GET", path, None, auth)["status"] == "waiting_approval")
        server.signal(signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        server.close()
    server = ServeProcess(tmp_path / "data", env, database_url)
    try:
        assert server.request("GET", path, None, auth)["status"] == "failed"  # interrupted
        server.request("POST", f"{path}/resume", {}, auth)
        await until(lambda: server.request("GET", path, None, auth)["status"] == "waiting_approval")
        assert not (work / "made.txt").exists()
        asked = approvals(tmp_path / "data", database_url, task["id"])
        assert len(asked) == 2 and asked[0]["call_id"] == asked[1]["call_id"]  # asked again
        first = asked[0]["call_id"]
        assert server.request("POST", f"{path}/approvals/{first}", {"decision": "approve"}, auth)

        async def asked_three_times() -> list[Any]:
            asked = approvals(tmp_path / "data", database_url, task["id"])
            return asked if len(asked) == 3 else []

        second = (await until(asked_three_times))[-1]["call_id"]
        assert (work / "made.txt").exists() and not (work / "after.txt").exists()
        assert second != first  # the turn's next call, asked in its turn
        server.request("POST", f"{path}/approvals/{second}", {"decision": "approve"}, auth)
        await until(lambda: server.request("GET", path, None, auth)["status"] == "completed")
        assert (work / "after.txt").read_text() == "after\n"
    finally:
        server.close()


def approvals(data_dir: Path, database_url: str | None, task_id: str) -> list[Any]:
    """The task's `approval_request` events as committed (read from its database)."""
    with direct_database(Settings(data_dir=data_dir, database_url=database_url)) as db:
        rows = db.execute(
            "SELECT data FROM events WHERE task_id = ? AND type = 'approval_request' ORDER BY seq",
            (task_id,),
        )
    return [json.loads(row[0]) for row in rows]


@pytest.mark.parametrize(
    "command",
    ["ls -la", "cat a b | grep x | head -5", "git status", "git diff HEAD~1 -- src",
     "git log --oneline -n 5", "find . -name '*.py'", "sort -r f | uniq -c", "ls src && ls",
     "grep -rn 'a > b' .", "wc -l a.py", "git branch -a"],
)  # fmt: skip
def test_commands_that_only_read_do_not_wait(command: str) -> None:
    assert command_risk(command) is None


@pytest.mark.parametrize(
    "command",
    ["rm -rf x", "ls > f", "ls; rm x", "ls\nrm x", "echo $(rm x)", "ls #; rm x", "ls & rm x",
     "find . -delete", "find . -exec rm {} ;", "sort -o out f", "sort -ro out f",
     "sort --out=x f", "uniq a b", "git -c core.pager=x log", "git push", "git branch -D x",
     "git branch newb", "git diff --output=x", "./ls", "FOO=1 ls", "python -m pytest", "pytest",
     "npm test", "sed -i s/a/b/ f", "awk 1 f", "tee f", "cat <<EOF", "cat < f", "(ls)",
     "ls && touch x", "ls | xargs rm", "rg --pre=sh x", "git grep -O x", "l\\s", "date -s now",
     "cat 'unterminated", "tree -o f", "`rm x`", "ls\r", "git stash", "git checkout .",
     "find . -maxdepth 0 {-exec,sh,-c,id,sh} {} +", "sort {-o,out} f", "rg {--pre,sh} x",
     "rg --hostname-bin=./x --hyperlink-format=default x", "rg -z x",
     "cd vendor/evil.git && git status", "tree -R -H . -L 1", "find . *", "rg x *",
     "sort * ", "git branch --set-upstream-to=origin/x", "uniq f*"],
)  # fmt: skip
def test_commands_that_may_change_something_wait(command: str) -> None:
    assert command_risk(command) is not None


def test_a_path_the_agent_could_plant_programs_in_makes_nothing_read_only(tmp_path: Path) -> None:
    assert command_risk("ls", path="/usr/bin:bin") is not None
    assert command_risk("ls", path=f"/usr/bin:{tmp_path}/tools", working_directory=tmp_path)
    assert command_risk("ls", path="/usr/bin:/bin", working_directory=tmp_path) is None


def test_the_policies() -> None:
    view = json.dumps({"command": "view", "path": "a"})
    create = json.dumps({"command": "create", "path": "a", "file_text": ""})
    ls = json.dumps({"command": "ls"})
    assert needs_approval("never", "terminal", json.dumps({"command": "rm -rf /"})) is None
    assert needs_approval("risky", "editor", view) is None
    assert needs_approval("risky", "editor", create) is not None
    assert needs_approval("risky", "terminal", ls) is None
    assert needs_approval("always", "terminal", ls) is not None
    assert needs_approval("always", "editor", view) is not None
    assert needs_approval("risky", "mcp__fs__write", "{}") is not None
    assert needs_approval("always", "plan", "{}") is None  # the agent's own bookkeeping
