"""Follow-up tasks remember the session's earlier tasks (task field `context`).

Through the real server and the scripted provider: what a task's first model
request holds of the earlier tasks of its session; and `session_context` itself,
on histories folded from events, for the order in which it condenses them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_helpers import (
    User,
    create_session,
    expect_error,
    expect_json,
    get_task,
    serve,
    sign_up,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from waiting import until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.context import DROPPED, estimate_tokens
from minidevin.runtime.events import Event
from minidevin.runtime.followups import EARLIER_TASK, EarlierTask, session_context
from minidevin.runtime.settings import Settings
from minidevin.runtime.task_history import TaskHistory

FIX = "Fix add() in calc.py"
SUMMARY = "Fixed add() in calc.py to return a + b"
MARKER = "output-of-the-first-task"


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


async def run_task(
    client: TestClient, user: User, session_id: str, description: str, **fields: Any
) -> dict[str, Any]:
    """Create a task and wait for it to end; its detail."""
    task = await expect_json(
        await client.post(
            f"/api/sessions/{session_id}/tasks",
            json={"description": description, "model": "gpt-4o", **fields},
            headers=user.key,
        ),
        201,
    )

    async def done() -> dict[str, Any] | None:
        detail = await get_task(client, user, task["id"])
        return detail if detail["status"] in ("completed", "failed", "stopped") else None

    return await until(done, what=f"{description!r} to end")


def first_task_turns(command: str) -> list[ScriptedTurn]:
    return [
        ScriptedTurn(text="Looking at it.", tool_calls=[("terminal", {"command": command})]),
        ScriptedTurn(tool_calls=[("finish", {"summary": SUMMARY, "success": True})]),
    ]


async def test_a_follow_up_starts_with_the_earlier_task_and_a_fresh_one_without(
    client: TestClient, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [*first_task_turns(f"echo {MARKER}"), finish("test added"), finish("fresh")]
    )
    user = await sign_up(client)
    session = await create_session(client, user, tmp_path)
    first = await run_task(client, user, session["id"], FIX)
    assert first["status"] == "completed" and first["context"] == "session"
    alone = openai_server.requests[0]["messages"]
    assert [m["role"] for m in alone] == ["system", "user"]  # nothing earlier in the session

    follow = await run_task(client, user, session["id"], "Now add a test for the function")
    assert follow["context"] == "session" and follow["status"] == "completed"
    sent = openai_server.requests[2]["messages"]
    assert sent[0]["role"] == "system" and sent[-1] == {
        "role": "user",
        "content": "Now add a test for the function",
    }
    earlier = sent[1:-1]  # the first task's conversation, oldest first, then our own
    assert earlier[0] == {"role": "user", "content": EARLIER_TASK + FIX}
    calls = [c for m in earlier for c in m.get("tool_calls") or []]
    assert [c["function"]["name"] for c in calls] == ["terminal", "finish"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"command": f"echo {MARKER}"}
    assert json.loads(calls[1]["function"]["arguments"])["summary"] == SUMMARY
    results = [m for m in earlier if m["role"] == "tool"]
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in calls]
    assert MARKER in results[0]["content"]
    # the first task's conversation as it was: its request and turns, the system prompt aside
    first_sent = openai_server.requests[1]["messages"]
    assert earlier[1 : len(first_sent) - 1] == first_sent[2:]

    fresh = await run_task(client, user, session["id"], "Something unrelated", context="fresh")
    assert fresh["context"] == "fresh"
    alone_again = openai_server.requests[3]["messages"]
    assert [m["role"] for m in alone_again] == ["system", "user"]
    text = json.dumps(alone_again)
    assert FIX not in text and SUMMARY not in text and MARKER not in text

    listed = await expect_json(
        await client.get(f"/api/sessions/{session['id']}/tasks", headers=user.bearer)
    )
    assert [t["id"] for t in listed] == [first["id"], follow["id"], fresh["id"]]
    await expect_error(
        await client.post(
            f"/api/sessions/{session['id']}/tasks",
            json={"description": "x", "context": "everything"},
            headers=user.key,
        ),
        422,
        "VALIDATION_ERROR",
    )


async def test_a_follow_up_sees_every_earlier_task_oldest_first_even_failed_ones(
    client: TestClient, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(tool_calls=[("terminal", {"command": "echo loop"})]),  # fails: limit 1
            finish("second done"),
            finish("third done"),
        ]
    )
    user = await sign_up(client)
    session = await create_session(client, user, tmp_path)
    one = await run_task(client, user, session["id"], "first job", max_iterations=1)
    assert one["status"] == "failed"
    await run_task(client, user, session["id"], "second job")
    await run_task(client, user, session["id"], "third job")
    sent = openai_server.requests[2]["messages"]
    marked = [m["content"] for m in sent if str(m.get("content")).startswith(EARLIER_TASK)]
    assert marked == [EARLIER_TASK + "first job", EARLIER_TASK + "second job"]
    assert sent[-1] == {"role": "user", "content": "third job"}
    # the first ended at its limit with a call: its result is in, the calls all answered
    ids = [c["id"] for m in sent for c in m.get("tool_calls") or []]
    answered = [m["tool_call_id"] for m in sent if m["role"] == "tool"]
    assert ids == answered and len(ids) == 2


async def test_in_a_tiny_window_earlier_tasks_are_reduced_to_description_and_summary(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    long_command = f"{sys.executable} -c \"print('{MARKER}' * 200)\"  # " + "y" * 3000
    openai_server.script([*first_task_turns(long_command), finish("tested")])
    tiny = settings.model_copy(update={"context_windows": {"gpt-4o": 1200}})
    async with serve(tiny, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, tmp_path)
        first = await run_task(client, user, session["id"], FIX)
        assert first["status"] == "completed"
        follow = await run_task(client, user, session["id"], "Now add a test")
        assert follow["status"] == "completed"
    sent = openai_server.requests[2]["messages"]
    assert sent[1:] == [
        {"role": "user", "content": EARLIER_TASK + FIX},
        {"role": "assistant", "content": SUMMARY},
        {"role": "user", "content": "Now add a test"},
    ]
    assert MARKER not in json.dumps(sent)


# -- session_context on its own ---------------------------------------------------------------


def folded(task_id: str, description: str, output: str, summary: str | None) -> EarlierTask:
    """An ended task rebuilt from the events its TaskActor would have emitted."""
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("system_prompt", {"content": "You are a coding agent.", "instructions": []}),
        ("user_message", {"content": description, "source": "task"}),
        ("turn_start", {"iteration": 1}),
        (
            "model_turn",
            {
                "content": "Running it.",
                "tool_calls": [
                    {"id": f"{task_id}-c1", "name": "terminal", "arguments": '{"command": "ls"}'}
                ],
            },
        ),
        ("tool_result", {"call_id": f"{task_id}-c1", "tool": "terminal", "output": output}),
        ("turn_start", {"iteration": 2}),
        ("model_turn", {"content": summary or "", "tool_calls": []}),
    ]
    result = {"success": True, "summary": summary} if summary else None
    bodies.append(("status", {"status": "completed", "message": "done", "result": result}))
    events = [
        Event(task_id, seq, type_, {**data, "success": True} if type_ == "tool_result" else data,
              "2026-01-01T00:00:00.000Z")
        for seq, (type_, data) in enumerate(bodies, 1)
    ]  # fmt: skip
    return EarlierTask(task_id, description, "completed", TaskHistory.rebuild(events))


def tools_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


def test_session_context_shortens_outputs_first_then_reduces_then_drops_the_oldest() -> None:
    big = "z" * 8000
    old = folded("old", "the old task", big, "old summary")
    new = folded("new", "the new task", big, "new summary")
    full = session_context([old, new], budget=100_000)
    assert tools_of(full) == [big, big]
    assert [m["content"] for m in full if m["role"] == "user"] == [
        EARLIER_TASK + "the old task",
        EARLIER_TASK + "the new task",
    ]
    size = estimate_tokens(full)

    # a little too big: the oldest output is shortened, the newer one kept
    shortened = session_context([old, new], budget=size - 100)
    outputs = tools_of(shortened)
    assert outputs[0].startswith("z" * 400) and "omitted" in outputs[0]
    assert outputs[1] == big
    assert len(shortened) == len(full)

    # smaller: both outputs shortened, then dropped, oldest first; assistants kept whole
    both = session_context([old, new], budget=size // 2)
    assert all("omitted" in out for out in tools_of(both))
    dropped = session_context([old, new], budget=estimate_tokens(both) - 50)
    assert tools_of(dropped)[0] == DROPPED
    assert [m for m in dropped if m["role"] == "assistant"] == [
        m for m in full if m["role"] == "assistant"
    ]

    # smaller still (every output dropped is not enough): the oldest task is reduced to
    # its description and summary, the newer one stays whole
    bare = [{**m, "content": DROPPED} if m["role"] == "tool" else m for m in full]
    lean = [old.reduced(), new.reduced()]
    reduced = session_context([old, new], budget=estimate_tokens(bare) - 1)
    assert reduced == lean[0] + bare[len(bare) // 2 :]
    both_reduced = session_context([old, new], budget=estimate_tokens(lean[0] + lean[1]))
    assert both_reduced == lean[0] + lean[1]

    # and last, left out, oldest first
    assert session_context([old, new], budget=estimate_tokens(lean[1])) == lean[1]
    assert session_context([old, new], budget=1) == []


def test_a_task_without_a_summary_is_reduced_to_how_it_ended_and_unstarted_ones_are_skipped() -> (
    None
):
    silent = folded("quiet", "say nothing", "out", None)
    silent.status = "failed"
    never = EarlierTask("never", "never ran", "stopped", TaskHistory())
    assert session_context([never], budget=100_000) == []
    assert session_context([silent, never], budget=1) == []
    reduced = silent.reduced()
    assert reduced == [
        {"role": "user", "content": EARLIER_TASK + "say nothing"},
        {"role": "assistant", "content": "(The task ended failed without a summary.)"},
    ]
