"""OpenTelemetry traces: one per task, under the request that created it.

A real server and the scripted provider; tracing turned on in this process
with the SDK's in-memory exporter (what `OTEL_EXPORTER_OTLP_ENDPOINT` would
send over OTLP), spans read from it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import provider_env
from http_helpers import create_session, serve, sign_up, stream
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess
from waiting import until

from minidevin.runtime import tracing
from minidevin.runtime.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
USER = {"email": "t@example.com", "password": "password123", "name": "T"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.disable()


def one(found: list[Any]) -> Any:
    assert len(found) == 1, [span.name for span in found]
    return found[0]


async def traced_task(
    settings: Settings,
    openai_server: ScriptedOpenAIServer,
    work: Path,
    spans: InMemorySpanExporter,
    flags: str,
) -> tuple[str, Any, Any]:
    """Run a task created with a caller's `traceparent` (trace flags `flags`) to its end:
    its id, the creating request's span and the task's span."""
    async with serve(settings, openai_server) as client:
        user = await sign_up(client)
        session = await create_session(client, user, work)
        created = await client.post(
            f"/api/sessions/{session['id']}/tasks",
            json={"description": "look around", "model": "gpt-4o"},
            headers={**user.key, "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-{flags}"},
        )
        assert created.status == 201, await created.text()
        task_id = (await created.json())["id"]
        messages, _ = await stream(client, task_id, user.token)
        assert messages[-1]["status"] == "completed", messages[-1]
        finished = await until(
            lambda: [s for s in spans.get_finished_spans() if s.name == "task"] or None,
            what="the task span ended",
        )
    request = one(
        [s for s in spans.get_finished_spans() if s.name == "POST /api/sessions/{session_id}/tasks"]
    )
    return task_id, request, one(finished)


async def test_a_task_is_one_trace_under_the_request_that_created_it_in_a_trusted_callers_trace(
    settings: Settings,
    openai_server: ScriptedOpenAIServer,
    buggy_repo: Path,
    spans: InMemorySpanExporter,
) -> None:
    openai_server.script(
        [
            ScriptedTurn(text="Look", tool_calls=[("terminal", {"command": "echo hi"})]),
            ScriptedTurn(tool_calls=[("terminal", {"command": "exit 3"})], prompt_tokens=30),
            finish("looked"),
        ]
    )
    trusting = settings.model_copy(update={"trace_join_callers": True})
    task_id, request, task = await traced_task(trusting, openai_server, buggy_repo, spans, "01")
    # the request joined the caller's trace; the task is its child, in the same trace
    assert f"{request.context.trace_id:032x}" == TRACE_ID
    assert f"{request.parent.span_id:016x}" == CALLER_SPAN
    assert request.attributes["http.response.status_code"] == 201
    assert task.context.trace_id == request.context.trace_id
    assert task.parent.span_id == request.context.span_id
    assert task.attributes["minidevin.task.id"] == task_id
    assert task.attributes["minidevin.task.status"] == "completed"
    assert task.attributes["gen_ai.request.model"] == "gpt-4o"

    children = [s for s in spans.get_finished_spans() if s.parent is not None]
    of_task = [s for s in children if s.parent.span_id == task.context.span_id]
    turns = [s for s in of_task if s.name == "model_turn"]
    tools = [s for s in of_task if s.name == "tool_call"]
    assert len(turns) == 3 and len(tools) == 2, [s.name for s in of_task]
    assert all(s.context.trace_id == task.context.trace_id for s in of_task)
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in turns] == [10, 30, 10]
    assert all(s.attributes["gen_ai.usage.output_tokens"] == 5 for s in turns)
    assert all(s.attributes["gen_ai.request.model"] == "gpt-4o" for s in turns)
    assert all(s.attributes["gen_ai.provider.name"] == "openai" for s in turns)
    assert [s.attributes["gen_ai.tool.name"] for s in tools] == ["terminal", "terminal"]
    assert [s.attributes["process.exit.code"] for s in tools] == [0, 3]
    assert [s.attributes["minidevin.tool.success"] for s in tools] == [True, False]
    assert tools[1].status.status_code == StatusCode.ERROR
    assert all(task.start_time <= s.start_time and s.end_time <= task.end_time for s in of_task)


async def test_a_clients_traceparent_is_only_linked_by_default(
    settings: Settings,
    openai_server: ScriptedOpenAIServer,
    buggy_repo: Path,
    spans: InMemorySpanExporter,
) -> None:
    """An untrusted caller can neither write into its trace nor unsample ours ("-00")."""
    openai_server.script([finish("done")])
    _, request, task = await traced_task(settings, openai_server, buggy_repo, spans, "00")
    assert request.parent is None and f"{request.context.trace_id:032x}" != TRACE_ID
    assert request.context.trace_flags.sampled
    link = one(list(request.links))
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (
        TRACE_ID,
        CALLER_SPAN,
    )
    assert task.context.trace_id == request.context.trace_id
    assert task.parent.span_id == request.context.span_id


async def test_a_run_whose_server_was_killed_is_recorded_at_the_next_start(
    settings: Settings,
    openai_server: ScriptedOpenAIServer,
    buggy_repo: Path,
    spans: InMemorySpanExporter,
) -> None:
    """Its `task` span died with the process, unexported: the next start records the run,
    failed `INTERRUPTED`, from when it started to its last committed event."""
    openai_server.script([ScriptedTurn(text="Thinking", stall=True)])
    env = {**provider_env(openai_server), "MINIDEVIN_JWT_SECRET": settings.jwt_secret or ""}
    killed = ServeProcess(settings.data_dir, env, settings.database_url)
    try:
        killed.request("POST", "/api/auth/register", USER)
        token = killed.request("POST", "/api/auth/login", USER)["access_token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = {"name": "s", "working_directory": str(buggy_repo)}
        session = killed.request("POST", "/api/sessions", body, auth)
        task = killed.request(
            "POST", f"/api/sessions/{session['id']}/tasks", {"description": "think"}, auth
        )
        await openai_server.wait_for_requests(1, timeout=15)  # mid-turn
        await until(
            lambda: (
                killed.request("GET", f"/api/tasks/{task['id']}", None, auth)["status"] == "running"
            ),
            what="the task running, as the database says",
        )
        killed.signal(signal.SIGKILL)
        killed.wait(timeout=10)
    finally:
        killed.close()
    assert not spans.get_finished_spans()
    async with serve(settings, openai_server):
        recorded = one([s for s in spans.get_finished_spans() if s.name == "task"])
    assert recorded.attributes["minidevin.task.id"] == task["id"]
    assert recorded.attributes["minidevin.session.id"] == session["id"]
    assert recorded.attributes["error.type"] == "INTERRUPTED"
    assert recorded.status.status_code == StatusCode.ERROR
    started = datetime.fromisoformat(task["created_at"].replace("Z", "+00:00")).timestamp()
    assert started - 1 <= recorded.start_time / 1e9 < recorded.end_time / 1e9 < time.time()


def test_tracing_is_off_and_the_sdk_not_imported_without_the_endpoint(tmp_path: Path) -> None:
    """A server app built without `OTEL_EXPORTER_OTLP_ENDPOINT`: no SDK, no spans."""
    program = (
        "import sys\n"
        "from minidevin.api import Runtime\n"
        "from minidevin.http.app import create_app\n"
        "from minidevin.runtime import tracing\n"
        "from minidevin.runtime.settings import Settings\n"
        f"create_app(Runtime(Settings(data_dir={str(tmp_path / 'data')!r})))\n"
        "assert not tracing.enabled()\n"
        "assert 'opentelemetry.sdk' not in sys.modules, 'SDK imported'\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
