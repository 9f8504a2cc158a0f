"""Resuming a failed or stopped task through the REST API and the WebSocket, end to end.

A real aiohttp server on 127.0.0.1, real SQLite, real commands, and the real
openai SDK speaking to the scripted provider, which records every request: what
the model is sent after a resume proves the conversation was rebuilt from the log.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_helpers import (
    GatedModel,
    User,
    artifacts_of,
    check_sequence,
    create_session,
    expect_error,
    expect_json,
    get_task,
    is_final,
    read_until_closed,
    serve,
    sign_up,
    stream,
    ws_path,
)
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from waiting import until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.settings import Settings
from minidevin.runtime.task_history import INTERRUPTED_OUTPUT

LOOP = "keep calling tools"
RESUME_MESSAGE = "You have three more turns: finish the job."
RUN_FILES = {"run1-plan.json", "run1-diff.patch", "run1-trajectory.json"}
PLAIN_FILES = {"plan.json", "diff.patch", "trajectory.json"}


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(runtime, manage_runtime=False))


def terminal(command: str) -> ScriptedTurn:
    return ScriptedTurn(text=f"Running {command}.", tool_calls=[("terminal", {"command": command})])


async def post_task(
    client: TestClient, user: User, session_id: str, description: str, **fields: Any
) -> dict[str, Any]:
    return await expect_json(
        await client.post(
            f"/api/sessions/{session_id}/tasks",
            json={"description": description, "model": "gpt-4o", **fields},
            headers=user.key,
        ),
        201,
    )


async def resume(client: TestClient, user: User, task_id: str, body: Any = None) -> Any:
    if body is None:
        return await client.post(f"/api/tasks/{task_id}/resume", headers=user.key)
    return await client.post(f"/api/tasks/{task_id}/resume", json=body, headers=user.key)


async def ended(client: TestClient, user: User, task_id: str, status: str) -> dict[str, Any]:
    """The task once it is `status` (a final one), read over REST."""

    async def check() -> dict[str, Any] | None:
        task = await get_task(client, user, task_id)
        return task if task["status"] == status else None

    return await until(check, what=f"task {task_id} to be {status}")


def tool_calls_and_results(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(kind, call id) of every assistant tool call and tool result, in order."""
    order = []
    for message in messages:
        for call in message.get("tool_calls") or []:
            order.append(("call", call["id"]))
        if message["role"] == "tool":
            order.append(("result", message["tool_call_id"]))
    return order


# -- a task that ran out of iterations goes on ------------------------------------------------


async def test_a_task_failed_at_its_iteration_limit_resumes_with_its_whole_conversation(
    client: TestClient, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    model = GatedModel()
    openai_server.responder = model
    gate = asyncio.Event()
    for turn in (terminal("echo one > one.txt"), terminal("echo two > two.txt")):
        model.add(LOOP, turn)
    model.add(LOOP, terminal("echo three > three.txt"), gate)  # the first turn after the resume
    model.add(LOOP, finish("wrote one, two and three"))
    user = await sign_up(client)
    session = await create_session(client, user, tmp_path)
    task = await post_task(client, user, session["id"], LOOP, max_iterations=2)

    first_run, code = await stream(client, task["id"], user.token)
    assert code == 1000 and first_run[-1]["status"] == "failed"
    assert [e["code"] for e in first_run if e["type"] == "error"] == ["MAX_ITERATIONS_REACHED"]
    failed = await get_task(client, user, task["id"])
    assert (failed["iterations"], failed["max_iterations"]) == (2, 2)
    assert {a for a in await artifacts_of(client, user, task["id"])} == PLAIN_FILES

    body = {"message": RESUME_MESSAGE, "max_iterations": 3}
    resumed = await expect_json(await resume(client, user, task["id"], body), 202)
    assert resumed["id"] == task["id"] and resumed["status"] in ("queued", "running")
    assert resumed["max_iterations"] == 5 and resumed["completed_at"] is None
    assert resumed["result"] is None

    # a new subscriber: the whole history (through the earlier `failed`), then live events
    ws = await client.ws_connect(ws_path(task["id"], user.token))
    await openai_server.wait_for_requests(3)
    gate.set()
    whole = await read_until_closed(ws)
    await ws.close()
    assert ws.close_code == 1000
    check_sequence(whole, task["id"])  # one log, 1..N, no gap across the resume
    assert whole[: len(first_run)] == first_run
    after = whole[len(first_run) :]
    assert after[0]["type"] == "resumed" and after[0]["message"] == RESUME_MESSAGE
    assert after[0]["max_iterations"] == 5
    statuses = [e["status"] for e in whole if e["type"] == "status"]
    assert statuses == ["queued", "running", "failed", "queued", "running", "completed"]
    assert is_final(whole[-1]) and whole[-1]["result"]["summary"] == "wrote one, two and three"
    assert (tmp_path / "three.txt").read_text() == "three\n"
    # a client that saw the first run's end reads on from there
    rest, code = await stream(client, task["id"], user.token, after=len(first_run))
    assert code == 1000 and rest == after

    # the model's first request after the resume: the whole earlier conversation, then the
    # resume message as the last user message
    before, after_resume = (
        openai_server.requests[1]["messages"],
        openai_server.requests[2]["messages"],
    )
    assert after_resume[: len(before)] == before
    tail = after_resume[len(before) :]
    assert [m["role"] for m in tail] == ["assistant", "tool", "user"]
    assert json.loads(tail[0]["tool_calls"][0]["function"]["arguments"]) == {
        "command": "echo two > two.txt"
    }
    assert tail[2] == {"role": "user", "content": RESUME_MESSAGE}
    assert tool_calls_and_results(after_resume) == [
        ("call", "call_1"),
        ("result", "call_1"),
        ("call", "call_2"),
        ("result", "call_2"),
    ]
    assert [m["content"] for m in after_resume if m["role"] == "user"] == [LOOP, RESUME_MESSAGE]
    assert len(openai_server.requests) == 4

    done = await get_task(client, user, task["id"])
    assert done["status"] == "completed" and done["result"]["summary"] == (
        "wrote one, two and three"
    )
    assert (done["iterations"], done["max_iterations"]) == (4, 5)  # 2 + 2 of 2 + 3 allowed
    assert done["completed_at"] is not None
    names = set(await artifacts_of(client, user, task["id"]))
    assert names == RUN_FILES | PLAIN_FILES


async def test_a_resumed_task_may_fail_at_its_new_limit_and_resume_again(
    client: TestClient, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([terminal(f"echo {n}") for n in range(3)] + [finish("third run")])
    user = await sign_up(client)
    session = await create_session(client, user, tmp_path)
    task = await post_task(client, user, session["id"], LOOP, max_iterations=2)
    await ended(client, user, task["id"], "failed")
    await expect_json(await resume(client, user, task["id"], {"max_iterations": 1}), 202)
    again = await ended(client, user, task["id"], "failed")
    assert (again["iterations"], again["max_iterations"]) == (3, 3)
    await expect_json(await resume(client, user, task["id"]), 202)  # no body: 2 more
    done = await ended(client, user, task["id"], "completed")
    assert (done["iterations"], done["max_iterations"]) == (4, 5)
    names = set(await artifacts_of(client, user, task["id"]))
    second_run = {name.replace("run1", "run2") for name in RUN_FILES}
    assert names == RUN_FILES | second_run | PLAIN_FILES
    events, _ = await stream(client, task["id"], user.token)
    check_sequence(events, task["id"])
    assert [e["status"] for e in events if is_final(e)] == ["failed", "failed", "completed"]


# -- refusals ---------------------------------------------------------------------------------


async def test_resume_refuses_live_and_completed_tasks_and_bad_bodies(
    client: TestClient, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    model = GatedModel()
    openai_server.responder = model
    hold = asyncio.Event()
    model.add("holds its session", finish(), hold)
    model.add("waits behind it", finish())
    model.add("asks", ScriptedTurn(tool_calls=[("ask_user", {"question": "Which one?"})]))
    model.add("asks", finish())
    model.add("completes", finish("complete"))
    model.add("fails", terminal("true"))
    user = await sign_up(client)
    other = await sign_up(client, "eve@example.com", "Eve")
    busy = await create_session(client, user, tmp_path)
    running = await post_task(client, user, busy["id"], "holds its session")
    queued = await post_task(client, user, busy["id"], "waits behind it")
    asking = await post_task(
        client, user, (await create_session(client, user, tmp_path))["id"], "asks"
    )
    completed = await post_task(
        client, user, (await create_session(client, user, tmp_path))["id"], "completes"
    )
    failed = await post_task(
        client, user, (await create_session(client, user, tmp_path))["id"], "fails",
        max_iterations=1,
    )  # fmt: skip
    await openai_server.wait_for_requests(1)
    await ended(client, user, completed["id"], "completed")
    await ended(client, user, failed["id"], "failed")

    async def waiting_input() -> bool:
        return (await get_task(client, user, asking["id"]))["status"] == "waiting_input"

    await until(waiting_input, what="the question")
    assert (await get_task(client, user, running["id"]))["status"] == "running"
    assert (await get_task(client, user, queued["id"]))["status"] == "queued"
    for task in (running, queued, asking, completed):
        await expect_error(await resume(client, user, task["id"], {}), 409, "CONFLICT")
    refused = await expect_error(await resume(client, user, completed["id"]), 409, "CONFLICT")
    assert "follow-up" in refused["detail"]

    # another user's task does not exist for them; an unknown id neither
    await expect_error(await resume(client, other, failed["id"]), 404, "NOT_FOUND")
    await expect_error(await resume(client, user, "no-such-task"), 404, "NOT_FOUND")
    for bad in (
        {"max_iterations": 0},
        {"max_iterations": "three"},
        {"max_iterations": 1001},
        {"max_cost_usd": -1},
        {"message": ""},
        {"message": 42},
    ):
        await expect_error(await resume(client, user, failed["id"], bad), 422, "VALIDATION_ERROR")
    bad_json = await client.post(
        f"/api/tasks/{failed['id']}/resume", data=b"{nope", headers=user.key
    )
    await expect_error(bad_json, 422, "VALIDATION_ERROR")
    # nothing of that changed the tasks
    assert (await get_task(client, user, failed["id"]))["status"] == "failed"
    assert (await get_task(client, user, completed["id"]))["status"] == "completed"
    hold.set()
    await client.post(f"/api/tasks/{asking['id']}/input", json={"content": "A"}, headers=user.key)
    for task in (running, queued, asking):
        await ended(client, user, task["id"], "completed")


async def test_two_concurrent_resumes_one_wins_and_an_empty_body_is_enough(
    client: TestClient, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([terminal("true"), finish("after one resume")])
    user = await sign_up(client)
    session = await create_session(client, user, tmp_path)
    task = await post_task(client, user, session["id"], LOOP, max_iterations=1)
    await ended(client, user, task["id"], "failed")

    answers = await asyncio.gather(
        resume(client, user, task["id"]), resume(client, user, task["id"])
    )
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [202, 409], statuses
    loser = next(answer for answer in answers if answer.status == 409)
    await expect_error(loser, 409, "CONFLICT")
    done = await ended(client, user, task["id"], "completed")
    assert done["result"]["summary"] == "after one resume"
    events, _ = await stream(client, task["id"], user.token)
    check_sequence(events, task["id"])
    assert [e["type"] for e in events].count("resumed") == 1
    assert len(openai_server.requests) == 2


# -- stopped, and out of budget ---------------------------------------------------------------


async def test_a_stopped_task_resumes_with_its_original_iteration_limit(
    client: TestClient, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    model = GatedModel()
    openai_server.responder = model
    gate = asyncio.Event()
    model.add("stop me", terminal("echo before > before.txt"))
    model.add("stop me", finish("never sent"), gate)  # stopped while this turn is pending
    model.add("stop me", finish("finished after the stop"))
    user = await sign_up(client)
    session = await create_session(client, user, tmp_path)
    task = await post_task(client, user, session["id"], "stop me", max_iterations=4)
    await openai_server.wait_for_requests(2)
    stopped = await expect_json(
        await client.post(f"/api/tasks/{task['id']}/stop", headers=user.key)
    )
    assert stopped["status"] == "stopped"
    gate.set()  # (the stopped turn's request is over; its answer is never read)
    row = await ended(client, user, task["id"], "stopped")
    assert (row["iterations"], row["max_iterations"]) == (1, 4)

    resumed = await expect_json(await resume(client, user, task["id"], {}), 202)
    assert resumed["max_iterations"] == 1 + 4  # as many more as it was created with
    done = await ended(client, user, task["id"], "completed")
    assert done["result"]["summary"] == "finished after the stop"
    assert (done["iterations"], done["max_iterations"]) == (2, 5)
    sent = openai_server.requests[2]["messages"]
    assert (
        sent[: len(openai_server.requests[1]["messages"])] == openai_server.requests[1]["messages"]
    )
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == "call_1"
    assert [m["role"] for m in sent].count("assistant") == 1  # the stopped turn left nothing
    events, code = await stream(client, task["id"], user.token)
    assert code == 1000
    check_sequence(events, task["id"])
    assert [e["status"] for e in events if is_final(e)] == ["stopped", "completed"]


async def test_a_task_out_of_budget_resumes_with_its_budget_again_or_more(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    def pricey(name: str) -> ScriptedTurn:  # $0.0501 at $5 / $20 per 1M tokens
        return ScriptedTurn(
            tool_calls=[("terminal", {"command": f"touch {name}"})], prompt_tokens=10_000
        )

    openai_server.script([pricey("ran"), pricey("ran2"), finish("within the new budget")])
    priced = settings.model_copy(update={"model_prices": {"gpt-4o": (5.0, 20.0)}})
    async with serve(priced, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, tmp_path)
        task = await post_task(client, user, session["id"], "spend", max_cost_usd=0.01)
        events, _ = await stream(client, task["id"], user.token)
        assert [e["code"] for e in events if e["type"] == "error"] == ["BUDGET_EXCEEDED"]
        failed = await get_task(client, user, task["id"])
        assert failed["status"] == "failed" and failed["usage"]["cost_usd"] == pytest.approx(0.0501)

        # without a budget in the body: as much again as it was created with
        resumed = await expect_json(await resume(client, user, task["id"]), 202)
        assert resumed["max_cost_usd"] == pytest.approx(0.0501 + 0.01)
        again = await ended(client, user, task["id"], "failed")
        assert again["usage"]["cost_usd"] == pytest.approx(0.1002)
        events, _ = await stream(client, task["id"], user.token)
        assert [e["code"] for e in events if e["type"] == "error"] == ["BUDGET_EXCEEDED"] * 2

        body = {"max_cost_usd": 1.0}
        resumed = await expect_json(await resume(client, user, task["id"], body), 202)
        assert resumed["max_cost_usd"] == pytest.approx(1.1002)  # spent + the new allowance
        done = await ended(client, user, task["id"], "completed")
        assert done["result"]["summary"] == "within the new budget"
        assert done["usage"]["cost_usd"] == pytest.approx(0.1002 + 0.00015)
        assert not list(tmp_path.glob("ran*")), "a turn over budget never runs its calls"
        # those calls got no result then: the model is told they were interrupted
        interrupted = {"role": "tool", "tool_call_id": "call_1", "content": INTERRUPTED_OUTPUT}
        assert openai_server.requests[1]["messages"][-1] == interrupted
        assert openai_server.requests[2]["messages"][-1] == {
            **interrupted,
            "tool_call_id": "call_2",
        }
