"""Stop, input, limits, bad tool calls, provider failures and queueing, through the runtime."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from waiting import pids_running, until

from minidevin.api import Runtime
from minidevin.http.app import create_app
from minidevin.runtime.events import FINAL_STATUSES, Event
from minidevin.runtime.settings import Settings


async def collect(runtime: Runtime, task_id: str) -> list[Event]:
    return [event async for event in runtime.events(task_id)]


async def test_stop_during_a_command_kills_its_whole_process_tree(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = f"300.{time.time_ns() % 1000000}"  # unique: found on the host by cmdline
    command = f"bash -c 'sleep {marker} & wait' ; echo never"
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": command})])])
    session = await runtime.create_session("s", work)
    task = await runtime.create_task(session.id, "run something long")
    await until(lambda: bool(pids_running(f"sleep {marker}")), what="the grandchild")

    started = time.monotonic()
    stopped = await runtime.stop_task(task.id)
    events = await collect(runtime, task.id)
    latency = time.monotonic() - started
    assert stopped.status == "stopped"
    assert events[-1].type == "status" and events[-1].data["status"] == "stopped"
    assert latency < 1.0, f"stop took {latency:.3f}s"
    await until(lambda: not pids_running(f"sleep {marker}"), timeout=3, what="it to die")
    assert (await runtime.get_task(task.id)).status == "stopped"


STOPS = 20
STOP_P95_BOUND = 0.25  # s; the benchmark measures p50 12 ms, p99 47 ms


async def test_stop_latency_stays_near_the_benchmark_over_repeated_stops(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, aiohttp_client: Any, tmp_path: Path
) -> None:
    """POST /stop to the `stopped` event on the WebSocket, while `sleep 30` runs: p95 < 250 ms."""
    client = await aiohttp_client(create_app(runtime, manage_runtime=False))
    user = {"email": "stop@example.com", "password": "password123", "name": "S"}
    await client.post("/api/auth/register", json=user)
    token = (await (await client.post("/api/auth/login", json=user)).json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    body = {"name": "stops", "working_directory": str(tmp_path)}
    session = await (await client.post("/api/sessions", json=body, headers=auth)).json()
    nonce = time.time_ns() % 1_000_000
    markers = [f"30.{nonce}{n:02d}" for n in range(STOPS)]  # `sleep 30.x`, found by cmdline
    openai_server.script(
        [ScriptedTurn(tool_calls=[("terminal", {"command": f"sleep {m}"})]) for m in markers]
    )
    latencies = []
    for marker in markers:
        url = f"/api/sessions/{session['id']}/tasks"
        task = await (await client.post(url, json={"description": "sleep"}, headers=auth)).json()
        async with client.ws_connect(f"/ws/tasks/{task['id']}", headers=auth) as ws:
            async for message in ws:
                if message.json()["type"] == "tool_call":
                    break
            await until(lambda m=marker: bool(pids_running(f"sleep {m}")), what="the sleep")
            started = time.perf_counter()
            stop = asyncio.create_task(client.post(f"/api/tasks/{task['id']}/stop", headers=auth))
            async for message in ws:
                event = message.json()
                if event["type"] == "status" and event["status"] in FINAL_STATUSES:
                    latencies.append(time.perf_counter() - started)
                    break
            assert event["status"] == "stopped", event
            assert (await (await stop).json())["status"] == "stopped"
        await until(lambda m=marker: not pids_running(f"sleep {m}"), timeout=3, what="it to die")
    ordered = sorted(latencies)
    p50, p95 = ordered[len(ordered) // 2], ordered[math.ceil(0.95 * len(ordered)) - 1]
    summary = f"p50 {1000 * p50:.1f} ms, p95 {1000 * p95:.1f} ms, max {1000 * ordered[-1]:.1f} ms"
    print(f"stop -> stopped event over {STOPS} stops: {summary}")
    assert len(latencies) == STOPS
    assert p95 < STOP_P95_BOUND, summary


async def test_stop_while_the_model_streams(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text="thinking very slowly", stall=True)])
    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "think")
    await openai_server.wait_for_requests(1)
    started = time.monotonic()
    await runtime.stop_task(task.id)
    events = await collect(runtime, task.id)
    assert time.monotonic() - started < 1.0
    assert events[-1].data["status"] == "stopped"
    # stopping again changes nothing and answers the final status
    assert (await runtime.stop_task(task.id)).status == "stopped"


async def test_ask_user_waits_for_input_and_returns_the_answer(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(tool_calls=[("ask_user", {"question": "Proceed with the changes?"})]),
            finish(),
        ]
    )
    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "ask first")
    async for event in runtime.events(task.id):
        if event.type == "status" and event.data["status"] == "waiting_input":
            assert event.data["message"] == "Proceed with the changes?"
            break
    assert (await runtime.get_task(task.id)).status == "waiting_input"
    assert await runtime.send_input(task.id, "Yes, proceed")
    detail = await runtime.wait(task.id)
    assert detail.status == "completed"
    tool_message = openai_server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == "Yes, proceed"


async def test_input_without_a_question_reaches_the_next_turn(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(
                text="slow",
                tool_calls=[
                    (
                        "terminal",
                        {
                            "command": "cat gate 2>/dev/null; "
                            "while [ ! -f gate ]; do sleep 0.02; done"
                        },
                    )
                ],
            ),
            finish(),
        ]
    )
    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "work")
    await openai_server.wait_for_requests(1)
    assert await runtime.send_input(task.id, "also update the docs")
    (tmp_path / "gate").write_text("open")
    await runtime.wait(task.id)
    assert {"role": "user", "content": "also update the docs"} in openai_server.requests[1][
        "messages"
    ]


async def test_max_iterations_fails_the_task(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": "true"})])] * 3)
    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "loop", max_iterations=2)
    events = await collect(runtime, task.id)
    assert [e.data for e in events if e.type == "error"] == [
        {"error": "Maximum iterations reached", "code": "MAX_ITERATIONS_REACHED"}
    ]
    detail = await runtime.get_task(task.id)
    assert detail.status == "failed" and detail.iterations == 2


async def test_bad_tool_calls_become_failed_results_and_the_task_goes_on(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(
                tool_calls=[
                    ("browse", {"url": "http://example.com"}),
                    ("terminal", "{not json"),
                    ("editor", {"command": "view"}),
                    ("editor", {"command": "view", "path": "../../etc/passwd"}),
                    ("plan", {"steps": "not a list"}),
                ]
            ),
            finish(),
        ]
    )
    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "misbehave")
    events = await collect(runtime, task.id)
    results = [e.data for e in events if e.type == "tool_result"]
    assert [r["success"] for r in results] == [False] * 5 + [True]
    assert "unknown tool 'browse'" in results[0]["output"]
    assert "JSON" in results[1]["output"]
    assert "path" in results[2]["output"]
    assert events[-1].data["status"] == "completed"


async def test_provider_failure_ends_only_that_task(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [ScriptedTurn(error_status=401, error_code="invalid_api_key"), finish("ok")]
    )
    first = await runtime.create_session("a", tmp_path)
    failing = await runtime.create_task(first.id, "auth fails")
    events = await collect(runtime, failing.id)
    assert events[-2].type == "error" and events[-2].data["code"] == "PROVIDER_AUTH_FAILED"
    assert "sk-test-key-123" not in str([e.to_message() for e in events])
    assert events[-1].data["status"] == "failed"
    second = await runtime.create_session("b", tmp_path)
    healthy = await runtime.create_task(second.id, "works")
    assert (await runtime.wait(healthy.id)).status == "completed"


async def test_tasks_of_one_session_run_one_at_a_time_in_order(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    wait_gate = f"while [ ! -f {gate} ]; do sleep 0.02; done"
    openai_server.script(
        [
            ScriptedTurn(tool_calls=[("terminal", {"command": wait_gate})]),
            finish("one"),
            finish("two"),
        ]
    )
    session = await runtime.create_session("s", tmp_path)
    one = await runtime.create_task(session.id, "first")
    two = await runtime.create_task(session.id, "second")
    three = await runtime.create_task(session.id, "third")
    assert (one.status, two.status, three.status) == ("running", "queued", "queued")
    assert (await runtime.stop_task(three.id)).status == "stopped"
    await openai_server.wait_for_requests(1)
    assert (await runtime.get_task(two.id)).status == "queued"
    gate.write_text("go")
    assert (await runtime.wait(one.id)).result.summary == "one"
    assert (await runtime.wait(two.id)).result.summary == "two"
    assert (await runtime.get_task(three.id)).status == "stopped"
    assert len(openai_server.requests) == 3


async def test_sessions_run_in_parallel_up_to_the_global_cap(
    openai_server: ScriptedOpenAIServer, tmp_path: Path, database_url: str | None
) -> None:
    gate = tmp_path / "gate"
    wait_gate = f"while [ ! -f {gate} ]; do sleep 0.02; done"
    openai_server.script(
        [ScriptedTurn(tool_calls=[("terminal", {"command": wait_gate})]), finish("a"), finish("b")]
    )
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
        jwt_secret="c" * 40,
        max_concurrent_tasks=1,
    )
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_server.base_url}
    async with Runtime(settings, provider_env=env) as runtime:
        first = await runtime.create_session("a", tmp_path)
        second = await runtime.create_session("b", tmp_path)
        a = await runtime.create_task(first.id, "holds the only slot")
        b = await runtime.create_task(second.id, "waits for it")
        assert (a.status, b.status) == ("running", "queued")
        await openai_server.wait_for_requests(1)
        assert (await runtime.get_task(b.id)).status == "queued"
        gate.write_text("go")
        assert (await runtime.wait(a.id)).status == "completed"
        assert (await runtime.wait(b.id)).result.summary == "b"
