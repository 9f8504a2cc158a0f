"""The last things a task leaves: its artifact files and its final events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from minidevin.actors.deps import Deps
from minidevin.actors.messages import TaskSpec
from minidevin.runtime.artifacts import write_task_artifacts
from minidevin.runtime.event_types import Error, Status
from minidevin.runtime.events import TaskEventLog
from minidevin.runtime.task_history import TaskHistory

log = structlog.get_logger(__name__)

# (status, result, (error code, error text), status message)
Ending = tuple[str, dict[str, Any] | None, tuple[str, str] | None, str]


def task_ending(
    status: str,
    result: dict[str, Any] | None,
    error: tuple[str, str] | None,
    message: str | None,
) -> Ending:
    """The task's `Ending`; without `message`, the status message its outcome calls for."""
    if message is None:
        message = "Task completed successfully" if status == "completed" else f"Task {status}"
        if result is not None and not result["success"]:
            message = "Task finished without success"
    return (status, result, error, message)


def record_task_end(
    deps: Deps,
    spec: TaskSpec,
    events: TaskEventLog,
    ending: Ending,
    patch: str | Path | None,
    history: TaskHistory,
) -> None:
    """Write the task's artifacts, emit its error and final status, close its log.

    `patch`: the diff (text or file), or None when it could not be made. The
    final `status` event carries the result; the task row follows from it
    (`runtime/projection.py`). `trajectory.json` is rendered from the task's
    history, the fold of its log. An artifact that cannot be written is named
    in an `error` `ARTIFACTS_FAILED`, and a task that would have completed
    fails instead: it never ends `completed` without what it promised. None of
    these events waits for the store (a task can always end).
    """
    status, result, error, message = ending
    trajectory = {
        "task_id": spec.task_id,
        "description": spec.description,
        "model": spec.model,
        "usage": history.usage,
        "instructions": history.instructions,  # the AGENTS.md files the system prompt holds
        "messages": history.messages + history.pending,
    }
    rows, failures = write_task_artifacts(
        deps.settings.artifacts_dir, spec.task_id, history.plan, patch, trajectory
    )
    deps.store.add_artifacts(rows)
    if error is not None:
        events.emit(Error(error=error[1], code=error[0]), wait=False)
    if failures:
        log.error("artifacts_failed", task_id=spec.task_id, failures=failures)
        detail = "could not write the task's artifacts: " + "; ".join(failures)
        events.emit(Error(error=detail, code="ARTIFACTS_FAILED"), wait=False)
        if status == "completed":
            status, message = "failed", "Task failed: its artifacts could not be written"
    final = Status.model_validate({"status": status, "message": message, "result": result})
    events.emit(final, close=True)
