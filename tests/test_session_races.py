"""A task is never handed to a session that is being deleted, and old logs still fold.

The races are made deterministic by holding a task's admission (the step between
reading the session and handing the task over) until the deletion has begun.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from waiting import until

from minidevin.api import Runtime
from minidevin.runtime.errors import NotFound
from minidevin.runtime.events import Event
from minidevin.runtime.task_history import TaskHistory


def hold_admission(runtime: Runtime) -> tuple[asyncio.Event, asyncio.Event]:
    """(entered, release): a task's admission waits at `release` once it has `entered`."""
    entered, release = asyncio.Event(), asyncio.Event()
    admit = runtime.admission.admit

    async def held(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return await admit(*args)

    runtime.admission.admit = held  # type: ignore[method-assign]
    return entered, release


async def race_delete(runtime: Runtime, session_id: str, start: Any) -> None:
    """Start a task (`start()`), delete its session while the task is being admitted."""
    entered, release = hold_admission(runtime)
    starting = asyncio.create_task(start())
    await entered.wait()
    deleting = asyncio.create_task(runtime.delete_session(session_id))

    def delete_done_or_waiting() -> bool:  # (on the session's lock, if the task holds it)
        return deleting.done() or bool(getattr(runtime._session_lock(session_id), "_waiters", 0))

    await until(delete_done_or_waiting)
    release.set()
    results = await asyncio.gather(starting, deleting, return_exceptions=True)
    assert not isinstance(results[1], BaseException), results
    # whatever the order, nothing of the deleted session lives on
    assert runtime.live_session_actors == 0
    with pytest.raises(NotFound):
        await runtime.get_session(session_id)


async def test_a_task_created_while_its_session_is_deleted_never_runs(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": "true"})])] * 5)
    session = await runtime.create_session("s", tmp_path)
    await race_delete(runtime, session.id, lambda: runtime.create_task(session.id, "work"))


async def test_a_task_resumed_while_its_session_is_deleted_never_runs(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(tool_calls=[("terminal", {"command": "true"})])] * 6)
    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "work", max_iterations=1)
    assert (await runtime.wait(task.id)).status == "failed"
    await race_delete(runtime, session.id, lambda: runtime.resume_task(task.id))
    requests = len(openai_server.requests)
    await until(lambda: runtime.live_session_actors == 0)
    assert len(openai_server.requests) == requests  # no model turn after the deletion


def old_event(seq: int, type_: str, **data: Any) -> Event:
    return Event("t", seq, type_, data, "2026-01-01T00:00:00.000Z")


def test_a_log_from_before_call_ids_folds_without_a_conversation() -> None:
    """Tasks of an older version (no `call_id`, no conversation events) still fold."""
    history = TaskHistory.rebuild(
        [
            old_event(1, "status", status="running", message="Task started"),
            old_event(2, "tool_call", tool="terminal", input={"command": "ls"}),
            old_event(3, "tool_result", tool="terminal", output="a", success=True),
            old_event(4, "status", status="completed", message="done"),
        ]
    )
    assert not history.started and history.messages == [] and history.status == "completed"
