"""`/ws/tasks/{id}`: history then live events, resuming, fan-out, refusals, client messages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fix_a_test import fix_a_test_turns
from http_helpers import (
    ALLOWED_ORIGIN,
    GatedModel,
    User,
    check_sequence,
    create_session,
    create_task,
    expect_error,
    get_task,
    handshake_headers,
    next_message,
    parse_timestamp,
    read_until,
    read_until_closed,
    sign_up,
    stream,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings

STALL = ScriptedTurn(text="Thinking very hard about it", stall=True)


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


async def finished_task(
    client: TestClient, openai_server: ScriptedOpenAIServer, repo: Path
) -> tuple[User, dict[str, Any], list[dict[str, Any]]]:
    """A fix-a-test task watched live to its end: (user, task, the live events)."""
    openai_server.script(fix_a_test_turns())
    user = await sign_up(client)
    session = await create_session(client, user, repo)
    task = await create_task(client, user, session["id"])
    live, code = await stream(client, task["id"], user.token)
    assert code == 1000
    check_sequence(live, task["id"])
    assert live[-1]["type"] == "status" and live[-1]["status"] == "completed"
    return user, task, live


async def running_task(
    client: TestClient, openai_server: ScriptedOpenAIServer, repo: Path
) -> tuple[User, dict[str, Any], aiohttp.ClientWebSocketResponse, list[dict[str, Any]]]:
    """A task whose model is mid-stream, and a socket that has seen its first token."""
    openai_server.script(STALL)
    user = await sign_up(client)
    session = await create_session(client, user, repo)
    task = await create_task(client, user, session["id"])
    ws = await client.ws_connect(ws_path(task["id"], user.token))
    seen = await read_until(ws, lambda m: m["type"] == "token")
    return user, task, ws, seen


# -- history, resume, fan-out ------------------------------------------------------------------


async def test_a_late_subscriber_gets_the_whole_history_and_the_final_status(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    user, task, live = await finished_task(client, openai_server, buggy_repo)
    assert (await get_task(client, user, task["id"]))["status"] == "completed"
    for token in (user.token, user.token):  # twice: a replay changes nothing
        late, code = await stream(client, task["id"], token)
        assert code == 1000
        assert late == live


async def test_after_resumes_with_exactly_the_events_after_that_seq(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    user, task, live = await finished_task(client, openai_server, buggy_repo)
    last = len(live)
    assert last > 10
    for after in (0, 1, 2, last // 2, last - 2, last - 1):
        resumed, code = await stream(client, task["id"], user.token, after=after)
        assert code == 1000
        assert resumed == live[after:], after


async def test_after_the_final_seq_of_an_ended_task_closes_at_once(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    user, task, live = await finished_task(client, openai_server, buggy_repo)
    for after in (len(live), len(live) + 100):
        ws = await client.ws_connect(ws_path(task["id"], user.token, after))
        assert await read_until_closed(ws, timeout=3) == []
        assert ws.close_code == 1000


async def test_subscribers_during_the_run_each_get_the_identical_sequence(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    model, gate = GatedModel(), asyncio.Event()
    turns = fix_a_test_turns()
    model.add("Fix the failing test in test_calc.py", turns[0], gate)
    for turn in turns[1:]:
        model.add("Fix the failing test in test_calc.py", turn)
    openai_server.responder = model
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    task = await create_task(client, user, session["id"])
    await openai_server.wait_for_requests(1, timeout=20)  # the task is running, its model waits

    sockets = [await client.ws_connect(ws_path(task["id"], user.token)) for _ in range(3)]
    starts = [await read_until(ws, lambda m: m["seq"] == 2) for ws in sockets]  # subscribed
    assert (await get_task(client, user, task["id"]))["status"] == "running"
    gate.set()
    rests = await asyncio.gather(*(read_until_closed(ws) for ws in sockets))
    sequences = [start + rest for start, rest in zip(starts, rests, strict=True)]
    assert [ws.close_code for ws in sockets] == [1000, 1000, 1000]
    assert sequences[0] == sequences[1] == sequences[2]
    check_sequence(sequences[0], task["id"])
    assert sequences[0][-1]["status"] == "completed"
    assert len([m for m in sequences[0] if m["type"] == "token"]) >= 3  # (a turn's deltas: one)
    late, _ = await stream(client, task["id"], user.token)
    assert late == sequences[0]


class HistoryGate:
    """Holds the first history read of one task's events until the test releases it.

    It wraps the real store's history read (`events_wire_page`, the boundary between
    the runtime and its storage) and nothing else: the read runs unchanged once
    released.
    """

    def __init__(self, runtime: Runtime, task_id: str) -> None:
        self.reached, self.release = asyncio.Event(), asyncio.Event()
        self._read = runtime.store.events_wire_page
        self._task_id, self._armed = task_id, True

    async def events_wire_page(self, task_id: str, after: int, limit: int) -> list[Any]:
        if self._armed and task_id == self._task_id:
            self._armed = False
            self.reached.set()
            await self.release.wait()
        return await self._read(task_id, after, limit)


async def test_events_committed_between_subscribe_and_history_arrive_once(
    runtime: Runtime,
    client: TestClient,
    openai_server: ScriptedOpenAIServer,
    buggy_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The history-to-live switch: an event both in the history and in the live queue is sent once.

    The socket subscribes, then its history read is held; meanwhile the task
    commits events (the answer, a model turn, a second question), which reach
    the subscription's queue AND the history. Released, the socket must send
    each of them exactly once, then go on live.
    """
    openai_server.script(
        [
            ScriptedTurn(tool_calls=[("ask_user", {"question": "first?"})]),
            ScriptedTurn(text="Half way.", tool_calls=[("ask_user", {"question": "second?"})]),
            ScriptedTurn(text="All done."),
        ]
    )
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    task = await create_task(client, user, session["id"])

    async def waiting() -> bool:
        return (await get_task(client, user, task["id"]))["status"] == "waiting_input"

    await until(waiting, what="the first question")
    gate = HistoryGate(runtime, task["id"])
    monkeypatch.setattr(runtime.store, "events_wire_page", gate.events_wire_page)
    ws = await client.ws_connect(ws_path(task["id"], user.token))
    await asyncio.wait_for(gate.reached.wait(), 10)  # subscribed, history not read yet
    assert runtime.hub.subscriber_count(task["id"]) == 1

    await ws.send_json({"type": "input", "content": "go on"})  # (the socket's own input)
    watcher = await client.ws_connect(ws_path(task["id"], user.token))
    watched = await read_until(watcher, lambda m: m.get("message") == "second?")
    first_question = next(m["seq"] for m in watched if m.get("message") == "first?")
    in_both = [m for m in watched if m["seq"] > first_question]  # history AND live queue
    assert len(in_both) >= 4, in_both  # answer, running, the model's turn, the question

    gate.release.set()
    seen = await read_until(ws, lambda m: m.get("message") == "second?")
    assert seen == watched
    await ws.send_json({"type": "input", "content": "finish"})
    seen += await read_until_closed(ws)
    watched += await read_until_closed(watcher)
    check_sequence(seen, task["id"])  # no event twice, none missing
    assert seen == watched
    statuses = [m["status"] for m in seen if m["type"] == "status"]
    assert statuses == ["queued", *["running", "waiting_input"] * 2, "running", "completed"]


# -- refusals ----------------------------------------------------------------------------------


async def test_refusals_come_before_the_upgrade_in_the_error_format(
    client: TestClient, settings: Settings, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    user, task, _ = await finished_task(client, openai_server, buggy_repo)
    other = await sign_up(client, "other@example.com")
    now = int(time.time())
    expired = jwt.encode(
        {"sub": user.id, "iat": now - 7200, "exp": now - 3600}, settings.jwt_secret, "HS256"
    )
    forged = jwt.encode(
        {"sub": user.id, "iat": now, "exp": now + 600}, "not-the-secret-" + "z" * 32, "HS256"
    )
    tid = task["id"]
    cases: list[tuple[str, dict[str, str], int, str]] = [
        (ws_path(tid, None), {}, 401, "UNAUTHORIZED"),
        (ws_path(tid, ""), {}, 401, "UNAUTHORIZED"),
        (ws_path(tid, "not-a-jwt"), {}, 401, "UNAUTHORIZED"),
        (ws_path(tid, expired), {}, 401, "UNAUTHORIZED"),
        (ws_path(tid, forged), {}, 401, "UNAUTHORIZED"),
        (ws_path(tid, other.token), {}, 404, "NOT_FOUND"),
        (ws_path("no-such-task", user.token), {}, 404, "NOT_FOUND"),
        (ws_path(tid, user.token) + "&after=abc", {}, 422, "VALIDATION_ERROR"),
        (ws_path(tid, user.token) + "&after=-1", {}, 422, "VALIDATION_ERROR"),
        (ws_path(tid, user.token), {"Origin": "http://evil.example"}, 403, "FORBIDDEN"),
        (ws_path(tid, None), {"Origin": "http://evil.example"}, 403, "FORBIDDEN"),
    ]
    for path, headers, status, code in cases:
        response = await client.get(path, headers={**handshake_headers(), **headers})
        await expect_error(response, status, code)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(path, headers=headers)
        assert refused.value.status == status, path


async def test_allowed_origins_may_connect(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    user, task, live = await finished_task(client, openai_server, buggy_repo)
    for origin in (ALLOWED_ORIGIN, "http://localhost:3000"):
        ws = await client.ws_connect(ws_path(task["id"], user.token), origin=origin)
        assert await read_until_closed(ws) == live
        assert ws.close_code == 1000


async def test_the_server_completes_the_closing_handshake(
    runtime: Runtime, aiohttp_client: Any, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    app = create_app(runtime, manage_runtime=False)
    server_sockets: list[tuple[web.Request, web.StreamResponse]] = []

    async def remember(request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.WebSocketResponse):
            server_sockets.append((request, response))

    app.on_response_prepare.append(remember)
    client = await aiohttp_client(app)
    await finished_task(client, openai_server, buggy_repo)
    assert len(server_sockets) == 1
    request, server_ws = server_sockets[0]
    # the connection is over: the handler returned, or (the test server cancels handlers
    # whose connection is gone) was cancelled once the client's close frame was in
    done, _ = await asyncio.wait([request.task], timeout=10)
    assert done
    assert isinstance(server_ws, web.WebSocketResponse)
    assert server_ws.close_code == 1000


# -- client messages ---------------------------------------------------------------------------


async def test_a_stop_message_stops_the_running_task(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    user, task, ws, seen = await running_task(client, openai_server, buggy_repo)
    await ws.send_json({"type": "stop"})
    seen += await read_until_closed(ws)
    assert ws.close_code == 1000
    check_sequence(seen, task["id"])
    assert [m["status"] for m in seen if m["type"] == "status"] == ["queued", "running", "stopped"]
    assert (await get_task(client, user, task["id"]))["status"] == "stopped"
    assert len(openai_server.requests) == 1
    replay, _ = await stream(client, task["id"], user.token)
    assert replay == seen


async def test_malformed_client_messages_get_an_error_and_the_socket_stays_open(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    user, task, ws, seen = await running_task(client, openai_server, buggy_repo)
    for bad in ("not json", "[1, 2]", '{"type": "dance"}', '{"no": "type"}', '{"type": "input"}'):
        await ws.send_str(bad)
        error = await next_message(ws)
        while "seq" in error:  # a live event may come first
            seen.append(error)
            error = await next_message(ws)
        assert set(error) == {"type", "error", "code", "timestamp"}, (bad, error)
        assert error["type"] == "error" and error["code"] == "VALIDATION_ERROR"
        assert isinstance(error["error"], str) and error["error"]
        parse_timestamp(error["timestamp"])
        assert not ws.closed
    assert (await get_task(client, user, task["id"]))["status"] == "running"
    await ws.send_json({"type": "stop"})
    seen += await read_until_closed(ws)
    assert ws.close_code == 1000
    check_sequence(seen, task["id"])
    assert seen[-1]["status"] == "stopped"


async def test_an_input_message_answers_the_agents_question(
    client: TestClient, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(text="One question.", tool_calls=[("ask_user", {"question": "Why?"})]),
            ScriptedTurn(text="All done."),
        ]
    )
    user = await sign_up(client)
    session = await create_session(client, user, buggy_repo)
    task = await create_task(client, user, session["id"])
    ws = await client.ws_connect(ws_path(task["id"], user.token))
    seen = await read_until(ws, lambda m: m.get("status") == "waiting_input")
    assert seen[-1]["message"] == "Why?"
    assert (await get_task(client, user, task["id"]))["status"] == "waiting_input"
    await ws.send_json({"type": "input", "content": "Because the test fails."})
    seen += await read_until_closed(ws)
    check_sequence(seen, task["id"])
    statuses = [m["status"] for m in seen if m["type"] == "status"]
    assert statuses == ["queued", "running", "waiting_input", "running", "completed"]
    answer = next(m for m in seen if m["type"] == "tool_result")
    assert answer == {**answer, "tool": "ask_user", "output": "Because the test fails."}
    tool_messages = [m for m in openai_server.requests[1]["messages"] if m["role"] == "tool"]
    assert tool_messages[-1]["content"] == "Because the test fails."
    assert (await get_task(client, user, task["id"]))["result"]["summary"] == "All done."
