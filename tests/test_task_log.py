"""The task is its log: its conversation, its row and its trajectory all fold from its events.

A task with a plan, commands, a question answered by input, an input queued
while a command runs, and a finish, run through the real server; then its events,
read back from the store, are folded with `TaskHistory.rebuild` and compared with
what the model was sent, what `trajectory.json` holds and what the REST API answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_helpers import (
    artifacts_of,
    check_sequence,
    create_session,
    expect_json,
    get_task,
    sign_up,
    stream,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.event_types import BY_TYPE, parse_event
from minidevin.runtime.events import Event
from minidevin.runtime.projection import task_columns
from minidevin.runtime.task_history import TaskHistory

DESCRIPTION = "Document the calculator"
QUESTION = "Shall I also write a changelog entry?"
ANSWER = "Yes, a short one"
QUEUED = "Also mention the license"
PLAN = {
    "steps": [
        {"description": "Read the code", "status": "completed"},
        {"description": "Write the docs", "status": "in_progress"},
    ]
}


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


def turns(gate: Path) -> list[ScriptedTurn]:
    wait_gate = f"while [ ! -f {gate} ]; do sleep 0.02; done; echo gate open"
    return [
        ScriptedTurn(
            text="First a plan.",
            tool_calls=[("plan", PLAN), ("terminal", {"command": wait_gate})],
            prompt_tokens=100,
            completion_tokens=20,
        ),
        ScriptedTurn(
            text="A question.", tool_calls=[("ask_user", {"question": QUESTION})], prompt_tokens=200
        ),
        ScriptedTurn(
            text="Writing.",
            tool_calls=[
                ("editor", {"command": "create", "path": "DOCS.md", "file_text": "# calc\n"}),
                ("terminal", {"command": "cat DOCS.md"}),
            ],
            prompt_tokens=300,
        ),
        ScriptedTurn(
            text="All written.",
            tool_calls=[("finish", {"summary": "Documented calc", "success": True})],
            prompt_tokens=400,
        ),
    ]


async def test_the_log_rebuilds_the_conversation_the_row_and_the_trajectory(
    client: TestClient, runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    gate = work / "gate"
    openai_server.script(turns(gate))
    user = await sign_up(client)
    session = await create_session(client, user, work)
    task = await expect_json(
        await client.post(
            f"/api/sessions/{session['id']}/tasks",
            json={"description": DESCRIPTION, "model": "gpt-4o"},
            headers=user.key,
        ),
        201,
    )
    task_id = task["id"]
    inputs = f"/api/tasks/{task_id}/input"

    async def status_is(status: str) -> bool:
        return (await get_task(client, user, task_id))["status"] == status

    await openai_server.wait_for_requests(1)

    async def command_runs() -> bool:
        events = await runtime.store.events_after(task_id, 0)
        return any(e.type == "tool_call" and e.data["tool"] == "terminal" for e in events)

    await until(command_runs, what="the command")  # it waits for the gate: the input queues
    assert (await client.post(inputs, json={"content": QUEUED}, headers=user.key)).status == 202
    gate.write_text("open")
    await until(lambda: status_is("waiting_input"), what="the question")
    assert (await client.post(inputs, json={"content": ANSWER}, headers=user.key)).status == 202
    messages, code = await stream(client, task_id, user.token)
    assert code == 1000 and messages[-1]["status"] == "completed"
    check_sequence(messages, task_id)

    events = await runtime.store.events_after(task_id, 0)
    assert [e.to_message() for e in events] == messages  # the stream is the stored log
    history = TaskHistory.rebuild(events)
    size = sum(len(json.dumps(e.to_message())) for e in events)
    print(f"the task's log: {len(events)} events, {size} bytes as WebSocket messages")

    # every stored event is one of the typed events
    for event in events:
        assert type(parse_event(event.type, event.data)) is BY_TYPE[event.type]
    # each tool call pairs with its result by call_id, in order
    calls = [e.data for e in events if e.type == "tool_call"]
    results = [e.data for e in events if e.type == "tool_result"]
    assert [(c["call_id"], c["tool"]) for c in calls] == [
        (r["call_id"], r["tool"]) for r in results
    ]
    assert len(calls) == 6 and len({c["call_id"] for c in calls}) == 6

    # the fold is what the model was sent: each request is a prefix of the conversation
    assert not history.pending and not history.open_calls
    for request in openai_server.requests:
        assert history.messages[: len(request["messages"])] == request["messages"]
    last = openai_server.requests[-1]["messages"]
    rest = history.messages[len(last) :]
    assert [m["role"] for m in rest] == ["assistant", "tool"]  # the finish call and its result
    assert rest[0]["tool_calls"][0]["function"]["name"] == "finish"
    # with the answer as the question's result and the queued input as a user message
    users = [m["content"] for m in history.messages if m["role"] == "user"]
    assert users == [DESCRIPTION, QUEUED]
    asked = next(m for m in history.messages if m.get("tool_call_id") == results[2]["call_id"])
    assert results[2]["tool"] == "ask_user" and asked["content"] == ANSWER
    second = openai_server.requests[1]["messages"]
    assert second[-1] == {"role": "user", "content": QUEUED}  # sent with the next turn

    # the fold is trajectory.json
    artifacts = await artifacts_of(client, user, task_id)
    trajectory = json.loads(
        await (
            await client.get(
                f"/api/tasks/{task_id}/artifacts/{artifacts['trajectory.json']['id']}",
                headers=user.bearer,
            )
        ).read()
    )
    assert trajectory["messages"] == history.messages
    assert trajectory["usage"] == history.usage

    # the fold is the task row
    detail = await get_task(client, user, task_id)
    assert detail["status"] == history.status == "completed"
    assert detail["plan"] == history.plan
    assert [(s["description"], s["status"]) for s in history.plan["steps"]] == [
        (step["description"], step["status"]) for step in PLAN["steps"]
    ]
    assert detail["iterations"] == history.iterations == 4
    assert detail["usage"] == history.usage
    assert detail["usage"]["prompt_tokens"] == 1000
    assert detail["result"] == history.result == {"success": True, "summary": "Documented calc"}
    assert detail["started_at"] == next(
        e.timestamp for e in events if e.type == "status" and e.data["status"] == "running"
    )
    assert detail["completed_at"] == events[-1].timestamp


def test_the_projection_sets_only_what_each_event_says() -> None:
    """The row columns each event type writes (the store applies them in the event's commit)."""

    def event(type_: str, **data: Any) -> Event:
        return Event("t", 1, type_, data, "2026-01-01T00:00:00.000Z")

    running = task_columns(event("status", status="running", message="go"))
    assert running is not None and running["status"] == "running" and "started_at" in running
    final = task_columns(event("status", status="failed", message="x"))
    assert final == {"status": "failed", "completed_at": "2026-01-01T00:00:00.000Z", "result": None}
    resumed = task_columns(event("resumed", max_iterations=7, max_cost_usd=None))
    assert resumed == {  # queued at once: the row never reads failed without an end time
        "status": "queued",
        "completed_at": None,
        "result": None,
        "max_iterations": 7,
        "max_cost_usd": None,
    }
    assert task_columns(event("usage", usage={"prompt_tokens": 1}, iteration=3)) == {
        "usage": {"prompt_tokens": 1},
        "iterations": 3,
    }
    for silent in ("token", "tool_call", "tool_result", "model_turn", "turn_start", "error"):
        assert task_columns(event(silent)) is None
