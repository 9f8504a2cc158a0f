"""Sessions, tasks and artifacts through the REST API and the WebSocket, end to end.

A real aiohttp server on 127.0.0.1, real WebSocket clients, real SQLite in a
temp dir, the real openai SDK speaking to the scripted provider server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from fix_a_test import RUN_TEST, fix_a_test_turns
from http_helpers import (
    FIX_DESCRIPTION,
    PASSWORD,
    GatedModel,
    User,
    artifacts_of,
    check_sequence,
    create_session,
    create_task,
    expect_error,
    expect_json,
    get_task,
    handshake_headers,
    next_message,
    parse_timestamp,
    read_until,
    read_until_closed,
    run_fix_a_test,
    serve,
    sign_up,
    stream,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.event_types import parse_event
from minidevin.runtime.settings import Settings

# a root-owned repository is handed to the sandbox uid when a session opens on it:
# git, run here as root, is told the repository is trusted
GIT = ["git", "-c", "safe.directory=*"]

# The fields of each message type the API document defines (besides type and timestamp,
# plus our seq and task_id); other types (e.g. `usage`) are extensions.
# the API document's fields of each of its message types (ours may add to them)
API_EVENT_FIELDS = {
    "token": {"content"},
    "tool_call": {"tool", "input"},
    "tool_result": {"tool", "output", "success"},
    "plan_update": {"plan"},
    "status": {"status", "message"},
    "error": {"error", "code"},
}


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


# -- the whole user story ----------------------------------------------------------------------


async def test_the_user_story_through_rest_and_websocket(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path, tmp_path: Path
) -> None:
    openai_server.script(fix_a_test_turns())
    registered = await expect_json(
        await client.post(
            "/api/auth/register",
            json={"email": "Ada@Example.com", "password": PASSWORD, "name": "Ada Lovelace"},
        ),
        201,
    )
    assert set(registered) == {"id", "email", "name", "created_at"}
    assert registered["email"] == "ada@example.com" and registered["name"] == "Ada Lovelace"
    uuid.UUID(registered["id"])
    parse_timestamp(registered["created_at"])

    login = await expect_json(
        await client.post(
            "/api/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
        )
    )
    assert set(login) == {"access_token", "token_type", "expires_in"}
    assert login["token_type"] == "bearer" and login["expires_in"] == 3600
    jwt = login["access_token"]
    bearer = {"Authorization": f"Bearer {jwt}"}

    key = await expect_json(
        await client.post("/api/auth/api-keys", json={"name": "laptop"}, headers=bearer), 201
    )
    assert set(key) == {"id", "name", "key", "created_at", "expires_at"}
    assert key["key"].startswith("md_") and len(key["key"]) > 30
    assert key["name"] == "laptop" and key["expires_at"] is None
    user = User(registered["id"], registered["email"], jwt, key["key"])

    session = await create_session(client, user, buggy_repo)
    assert set(session) == {"id", "name", "status", "working_directory", "created_at"}
    assert session["status"] == "active"
    assert session["working_directory"] == str(buggy_repo.resolve())

    task = await create_task(client, user, session["id"])
    assert set(task) == {"id", "description", "status", "created_at"}
    assert task["description"] == FIX_DESCRIPTION and task["status"] == "running"

    ws = await client.ws_connect(ws_path(task["id"], jwt))
    events = await read_until_closed(ws)
    assert ws.close_code == 1000
    check_sequence(events, task["id"])
    for event in events:  # each is its typed model, with every field the API names
        fields = {
            k: v for k, v in event.items() if k not in ("type", "seq", "task_id", "timestamp")
        }
        parse_event(event["type"], fields)
        assert API_EVENT_FIELDS.get(event["type"], set()) <= set(fields), event
    calls = {e["call_id"]: e["tool"] for e in events if e["type"] == "tool_call"}
    results = [(e["call_id"], e["tool"]) for e in events if e["type"] == "tool_result"]
    assert calls and sorted(results) == sorted(calls.items())  # each call paired by call_id
    types = [event["type"] for event in events]
    assert {"token", "plan_update", "tool_call", "tool_result", "status"} <= set(types)
    statuses = [event["status"] for event in events if event["type"] == "status"]
    assert statuses == ["queued", "running", "completed"]
    assert events[-1]["type"] == "status" and events[-1]["status"] == "completed"

    tokens = "".join(event["content"] for event in events if event["type"] == "token")
    assert tokens.startswith("Let me analyze the failing test.")
    calls = [(event["tool"], event["input"]) for event in events if event["type"] == "tool_call"]
    assert [tool for tool, _ in calls] == [
        "plan",
        "terminal",
        "editor",
        "terminal",
        "plan",
        "finish",
    ]
    assert calls[1][1] == {"command": RUN_TEST}
    assert calls[2][1]["command"] == "str_replace" and calls[2][1]["path"] == "calc.py"
    results = [event for event in events if event["type"] == "tool_result"]
    assert [r["tool"] for r in results][:5] == ["plan", "terminal", "editor", "terminal", "plan"]
    terminal = [r for r in results if r["tool"] == "terminal"]
    assert terminal[0]["success"] is False and "returned -1" in terminal[0]["output"]
    assert terminal[1]["success"] is True and "1 passed" in terminal[1]["output"], terminal[1]
    plans = [event["plan"] for event in events if event["type"] == "plan_update"]
    assert [step["id"] for step in plans[0]["steps"]] == ["step-1", "step-2", "step-3"]
    assert [step["status"] for step in plans[-1]["steps"]] == ["completed"] * 3

    detail = await get_task(client, user, task["id"])
    assert detail["status"] == "completed" and detail["iterations"] == 3
    assert detail["plan"] == plans[-1]
    assert detail["result"] == {"success": True, "summary": "Fixed add() to return a + b"}
    assert parse_timestamp(detail["completed_at"]) >= parse_timestamp(detail["created_at"])

    sessions = await expect_json(await client.get("/api/sessions", headers=user.bearer))
    assert len(sessions) == 1
    assert set(sessions[0]) == {"id", "name", "status", "created_at", "updated_at", "task_count"}
    assert sessions[0]["id"] == session["id"] and sessions[0]["task_count"] == 1
    got = await expect_json(await client.get(f"/api/sessions/{session['id']}", headers=user.bearer))
    assert got["tasks"] == [
        {"id": task["id"], "description": FIX_DESCRIPTION, "status": "completed"}
    ]
    assert got["working_directory"] == session["working_directory"]
    listed = await expect_json(
        await client.get(f"/api/sessions/{session['id']}/tasks", headers=user.key)
    )
    assert len(listed) == 1
    assert set(listed[0]) == {
        "id",
        "description",
        "status",
        "created_at",
        "completed_at",
        "iterations",
    }
    assert listed[0]["status"] == "completed" and listed[0]["iterations"] == 3

    artifacts = await artifacts_of(client, user, task["id"])
    assert {name: a["type"] for name, a in artifacts.items()} == {
        "plan.json": "plan",
        "diff.patch": "diff",
        "trajectory.json": "trajectory",
    }
    downloads = {}
    for name, artifact in artifacts.items():
        assert set(artifact) == {"id", "name", "type", "size", "created_at"}
        response = await client.get(
            f"/api/tasks/{task['id']}/artifacts/{artifact['id']}", headers=user.bearer
        )
        assert response.status == 200
        data = await response.read()
        assert artifact["size"] == len(data) > 0
        downloads[name] = (response.headers["Content-Type"], data)
    assert downloads["plan.json"][0].startswith("application/json")
    assert json.loads(downloads["plan.json"][1]) == detail["plan"]
    assert downloads["trajectory.json"][0].startswith("application/json")
    trajectory = json.loads(downloads["trajectory.json"][1])
    assert [m["role"] for m in trajectory["messages"]][:3] == ["system", "user", "assistant"]
    assert downloads["diff.patch"][0].startswith("text/x-diff")
    assert b"-    return a - b" in downloads["diff.patch"][1]
    patch = tmp_path / "fix.patch"
    patch.write_bytes(downloads["diff.patch"][1])
    subprocess.run([*GIT, "checkout", "--", "."], cwd=buggy_repo, check=True)
    subprocess.run([*GIT, "apply", "--check", str(patch)], cwd=buggy_repo, check=True)


# -- restart -----------------------------------------------------------------------------------


async def test_a_restart_keeps_users_keys_tokens_sessions_tasks_events_and_artifacts(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, buggy_repo: Path, database_url: str | None
) -> None:
    openai_server.script(fix_a_test_turns())
    data_dir = tmp_path / "restart-data"  # no jwt_secret: the generated one must be kept
    async with serve(
        Settings(database_url=database_url, data_dir=data_dir), openai_server
    ) as client:
        user = await sign_up(client)
        session, task, live = await run_fix_a_test(client, user, buggy_repo)
        before_sessions = await expect_json(await client.get("/api/sessions", headers=user.key))
        before_session = await expect_json(
            await client.get(f"/api/sessions/{session['id']}", headers=user.key)
        )
        before_task = await get_task(client, user, task["id"])
        before_artifacts = await artifacts_of(client, user, task["id"])
        before_bytes = {}
        for name, artifact in before_artifacts.items():
            response = await client.get(
                f"/api/tasks/{task['id']}/artifacts/{artifact['id']}", headers=user.key
            )
            before_bytes[name] = await response.read()

    async with serve(
        Settings(database_url=database_url, data_dir=data_dir), openai_server
    ) as client:
        login = await expect_json(
            await client.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
        )
        assert login["access_token"]
        # the old JWT and the API key both still authenticate
        assert await expect_json(await client.get("/api/sessions", headers=user.bearer)) == (
            before_sessions
        )
        assert before_sessions[0]["task_count"] == 1
        assert (
            await expect_json(await client.get(f"/api/sessions/{session['id']}", headers=user.key))
            == before_session
        )
        assert await get_task(client, user, task["id"]) == before_task
        assert before_task["status"] == "completed" and before_task["iterations"] == 3
        replay, code = await stream(client, task["id"], user.token)
        assert code == 1000
        assert replay == live
        assert replay[-1]["type"] == "status" and replay[-1]["status"] == "completed"
        assert await artifacts_of(client, user, task["id"]) == before_artifacts
        for name, artifact in before_artifacts.items():
            response = await client.get(
                f"/api/tasks/{task['id']}/artifacts/{artifact['id']}", headers=user.bearer
            )
            assert response.status == 200 and await response.read() == before_bytes[name]


async def test_a_task_live_at_shutdown_ends_stopped_and_stays_so_after_a_restart(
    tmp_path: Path, openai_server: ScriptedOpenAIServer, buggy_repo: Path, database_url: str | None
) -> None:
    openai_server.script(ScriptedTurn(text="Thinking very hard", stall=True))
    settings = Settings(
        database_url=database_url, data_dir=tmp_path / "restart-data", jwt_secret="s" * 40
    )
    # the watcher has its own HTTP session, so only the server can close its socket
    async with aiohttp.ClientSession() as watcher:
        async with serve(settings, openai_server) as client:
            user = await sign_up(client)
            session = await create_session(client, user, buggy_repo)
            task = await create_task(client, user, session["id"])
            ws = await watcher.ws_connect(client.make_url(ws_path(task["id"], user.token)))
            seen = await read_until(ws, lambda m: m["type"] == "token")
            rest = asyncio.create_task(read_until_closed(ws))
        # the server went away under the watcher: 1001, and it can resume elsewhere
        assert await rest == []
        assert ws.close_code == 1001

    async with serve(settings, openai_server) as client:
        detail = await get_task(client, user, task["id"])
        assert detail["status"] == "stopped" and detail["completed_at"] is not None
        resumed, code = await stream(client, task["id"], user.token, after=seen[-1]["seq"])
        assert code == 1000
        check_sequence(seen + resumed, task["id"])
        assert resumed[-1]["type"] == "status" and resumed[-1]["status"] == "stopped"
        artifacts = await artifacts_of(client, user, task["id"])
        assert set(artifacts) == {"plan.json", "diff.patch", "trajectory.json"}


# -- validation and deletion -------------------------------------------------------------------

BAD_TASK_BODIES: list[tuple[Any, str]] = [
    ({"model": "gpt-4o"}, "description"),
    ({"description": ""}, "description"),
    ({"description": "   "}, "description"),
    ({"description": "Fix it", "run_mode": "turbo"}, "run_mode"),
    ({"description": "Fix it", "max_iterations": 0}, "max_iterations"),
    ({"description": "Fix it", "max_iterations": "many"}, "max_iterations"),
    ({"description": "Fix it", "model": "no-such-model"}, "model"),
    ({"description": 42}, "description"),
    (b"this is not json", "JSON"),
    (b'{"description": "Fix it"', "JSON"),
    (b'["description", "Fix it"]', "JSON object"),
    (b'"Fix it"', "JSON object"),
    (b"", "JSON object"),
]


async def test_bad_task_bodies_are_422_naming_the_field_and_create_nothing(
    client: TestClient, buggy_repo: Path
) -> None:
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    url = f"/api/sessions/{session['id']}/tasks"
    for payload, field in BAD_TASK_BODIES:
        if isinstance(payload, bytes):
            headers = {**user.key, "Content-Type": "application/json"}
            response = await client.post(url, data=payload, headers=headers)
        else:
            response = await client.post(url, json=payload, headers=user.key)
        body = await expect_error(response, 422, "VALIDATION_ERROR")
        assert field in body["detail"], (payload, body)
    assert await expect_json(await client.get(url, headers=user.key)) == []


async def test_bad_session_bodies_are_422_naming_the_field(
    client: TestClient, tmp_path: Path
) -> None:
    user = await sign_up(client)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"working_directory": str(tmp_path)}, "name"),
        ({"name": "", "working_directory": str(tmp_path)}, "name"),
        ({"name": "s"}, "working_directory"),
        ({"name": "s", "working_directory": "relative/dir"}, "working_directory"),
    ]
    for payload, field in cases:
        response = await client.post("/api/sessions", json=payload, headers=user.bearer)
        body = await expect_error(response, 422, "VALIDATION_ERROR")
        assert field in body["detail"], (payload, body)
    missing = {"name": "s", "working_directory": str(tmp_path / "missing")}  # no hint it is
    response = await client.post("/api/sessions", json=missing, headers=user.bearer)
    body = await expect_error(response, 403, "FORBIDDEN")
    assert body["detail"] == "working_directory is not available"
    assert await expect_json(await client.get("/api/sessions", headers=user.bearer)) == []


async def test_delete_session_removes_it_with_its_tasks_events_and_artifact_files(
    client: TestClient,
    runtime: Runtime,
    openai_server: ScriptedOpenAIServer,
    buggy_repo: Path,
) -> None:
    openai_server.script(fix_a_test_turns())
    user = await sign_up(client)
    session, task, _ = await run_fix_a_test(client, user, buggy_repo)
    artifacts = await artifacts_of(client, user, task["id"])
    files = [runtime.settings.artifacts_dir / a["id"] for a in artifacts.values()]
    assert len(files) == 3 and all(path.is_file() for path in files)

    response = await client.delete(f"/api/sessions/{session['id']}", headers=user.key)
    assert response.status == 204 and await response.read() == b""

    assert not any(path.exists() for path in files)
    assert await expect_json(await client.get("/api/sessions", headers=user.key)) == []
    for method, url in [
        ("GET", f"/api/sessions/{session['id']}"),
        ("GET", f"/api/sessions/{session['id']}/tasks"),
        ("DELETE", f"/api/sessions/{session['id']}"),
        ("GET", f"/api/tasks/{task['id']}"),
        ("GET", f"/api/tasks/{task['id']}/artifacts"),
        ("GET", f"/api/tasks/{task['id']}/artifacts/{artifacts['diff.patch']['id']}"),
    ]:
        await expect_error(await client.request(method, url, headers=user.key), 404, "NOT_FOUND")
    refused = await client.get(ws_path(task["id"], user.token), headers=handshake_headers())
    await expect_error(refused, 404, "NOT_FOUND")
    assert await runtime.store.events_after(task["id"], 0) == []


async def test_deleting_a_session_stops_its_running_task_for_its_watchers(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script(ScriptedTurn(text="Thinking very hard", stall=True))
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    task = await create_task(client, user, session["id"])
    ws = await client.ws_connect(ws_path(task["id"], user.token))
    seen = await read_until(ws, lambda m: m["type"] == "token")

    reader = asyncio.create_task(read_until_closed(ws))  # the watcher keeps reading
    response = await client.delete(f"/api/sessions/{session['id']}", headers=user.key)
    assert response.status == 204
    seen += await reader
    assert ws.close_code == 1000
    check_sequence(seen, task["id"])
    assert seen[-1]["type"] == "status" and seen[-1]["status"] == "stopped"
    await expect_error(
        await client.get(f"/api/tasks/{task['id']}", headers=user.key), 404, "NOT_FOUND"
    )


# -- queueing ----------------------------------------------------------------------------------

FIRST, SECOND, THIRD = "First task", "Second task", "Third task"


async def test_a_second_task_queues_until_the_first_ends_then_runs(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    model, gate = GatedModel(), asyncio.Event()
    model.add(FIRST, ScriptedTurn(text="First done."), gate)
    model.add(SECOND, ScriptedTurn(text="Second done."))
    openai_server.responder = model
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    first = await create_task(client, user, session["id"], FIRST)
    assert first["status"] == "running"
    await openai_server.wait_for_requests(1, timeout=20)

    second = await create_task(client, user, session["id"], SECOND)
    assert second["status"] == "queued"
    assert (await get_task(client, user, second["id"]))["status"] == "queued"
    detail = await expect_json(await client.get(f"/api/sessions/{session['id']}", headers=user.key))
    assert [t["status"] for t in detail["tasks"]] == ["running", "queued"]
    watcher = await client.ws_connect(ws_path(second["id"], user.token))
    queued = await next_message(watcher)
    assert (queued["seq"], queued["type"], queued["status"]) == (1, "status", "queued")
    assert model.calls == [FIRST]

    gate.set()
    rest = await read_until_closed(watcher)
    check_sequence([queued, *rest], second["id"])
    assert [m["status"] for m in rest if m["type"] == "status"] == ["running", "completed"]
    assert model.calls == [FIRST, SECOND]
    done_first = await get_task(client, user, first["id"])
    done_second = await get_task(client, user, second["id"])
    assert done_first["status"] == done_second["status"] == "completed"
    assert done_second["result"]["summary"] == "Second done."
    assert parse_timestamp(done_second["started_at"]) >= parse_timestamp(done_first["completed_at"])


async def test_stopping_a_queued_task_means_it_never_runs(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    model, gate = GatedModel(), asyncio.Event()
    model.add(FIRST, ScriptedTurn(text="First done."), gate)
    model.add(SECOND, ScriptedTurn(text="Second must never run."))
    model.add(THIRD, ScriptedTurn(text="Third done."))
    openai_server.responder = model
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    first = await create_task(client, user, session["id"], FIRST)
    await openai_server.wait_for_requests(1, timeout=20)
    second = await create_task(client, user, session["id"], SECOND)
    assert second["status"] == "queued"

    stopped = await expect_json(
        await client.post(f"/api/tasks/{second['id']}/stop", headers=user.key)
    )
    assert stopped == {"id": second["id"], "status": "stopped"}
    assert (await get_task(client, user, second["id"]))["status"] == "stopped"
    history, code = await stream(client, second["id"], user.token)
    assert code == 1000
    assert [(m["seq"], m["type"], m["status"]) for m in history] == [
        (1, "status", "queued"),
        (2, "status", "stopped"),
    ]

    gate.set()
    third = await create_task(client, user, session["id"], THIRD)
    third_events, _ = await stream(client, third["id"], user.token)
    assert third_events[-1]["status"] == "completed"
    assert (await get_task(client, user, first["id"]))["status"] == "completed"
    assert model.calls == [FIRST, THIRD]
    never_ran = await get_task(client, user, second["id"])
    assert never_ran["status"] == "stopped" and never_ran["started_at"] is None
    assert never_ran["iterations"] == 0
    assert (await stream(client, second["id"], user.token))[0] == history

    # stopping an ended task answers its final status, unchanged
    for task_id, status in [(first["id"], "completed"), (second["id"], "stopped")]:
        again = await expect_json(await client.post(f"/api/tasks/{task_id}/stop", headers=user.key))
        assert again == {"id": task_id, "status": status}
        assert (await get_task(client, user, task_id))["status"] == status


# A 4 MB file the agent writes: hashing it into the end-of-task snapshot keeps the
# task in its ending phase (diff.patch being made) for a while, deterministically.
WRITE_BLOB = (
    f"{sys.executable} -c \"import os; open('blob.bin', 'wb').write(os.urandom(4_000_000))\""
)


def blob_then(turn: ScriptedTurn) -> list[ScriptedTurn]:
    return [
        ScriptedTurn(text="A blob first.", tool_calls=[("terminal", {"command": WRITE_BLOB})]),
        turn,
    ]


async def test_stopping_a_running_task_is_on_disk_when_acknowledged(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script(blob_then(ScriptedTurn(text="Thinking very hard", stall=True)))
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    task = await create_task(client, user, session["id"])
    ws = await client.ws_connect(ws_path(task["id"], user.token))
    await read_until(ws, lambda m: m["type"] == "token" and m["content"].strip() == "Thinking")

    stopped = await expect_json(
        await client.post(f"/api/tasks/{task['id']}/stop", headers=user.key)
    )
    assert stopped == {"id": task["id"], "status": "stopped"}
    assert (await get_task(client, user, task["id"]))["status"] == "stopped"


async def test_stopping_a_finishing_task_answers_the_status_it_ends_with(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    finish = ScriptedTurn(text="Done.", tool_calls=[("finish", {"summary": "ok", "success": True})])
    openai_server.script(blob_then(finish))
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    task = await create_task(client, user, session["id"])
    ws = await client.ws_connect(ws_path(task["id"], user.token))
    await read_until(ws, lambda m: m["type"] == "tool_call" and m["tool"] == "finish")

    answer = await expect_json(await client.post(f"/api/tasks/{task['id']}/stop", headers=user.key))
    rest = await read_until_closed(ws)
    final = (await get_task(client, user, task["id"]))["status"]
    assert rest[-1]["status"] == final
    assert answer == {"id": task["id"], "status": final}
