"""Resuming a task: which tasks may go on, and with what limits.

`POST /api/tasks/{id}/resume` (and `Runtime.resume_task`) continues a task that
ended `failed` or `stopped`: same id, its log goes on, its conversation is
rebuilt from the log. It may take `max_iterations` more model turns (default:
as many as it was created with) and spend `max_cost_usd` more (default: its
original budget again; none if it had none). A completed task is continued by
a follow-up task in its session instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from minidevin.actors.messages import TaskSpec
from minidevin.runtime import schemas
from minidevin.runtime.errors import ApiError, Conflict
from minidevin.runtime.events import Event

if TYPE_CHECKING:
    from minidevin.api import Runtime

log = structlog.get_logger(__name__)
RESUMABLE = frozenset({"failed", "stopped"})


def check_resumable(row: dict[str, Any]) -> None:
    """`Conflict` (409) unless the task ended `failed` or `stopped`."""
    status = row["status"]
    if status == "completed":
        raise Conflict("the task completed; continue it with a follow-up task in its session")
    if status not in RESUMABLE:
        raise Conflict(f"the task is {status}; only a failed or stopped task can be resumed")


def resumed_spec(
    row: dict[str, Any],
    session: dict[str, Any],
    request: schemas.ResumeRequest,
    model: str,
    identity: tuple[int, int],
    newest: Event | None,
) -> TaskSpec:
    """What the resumed task runs with: its own fields, the new limits, its log's last seq."""
    max_iterations, max_cost_usd = resumed_limits(row, request)
    return TaskSpec(
        row["id"],
        row["session_id"],
        row["description"],
        model,
        row["run_mode"],
        max_iterations,
        Path(session["working_directory"]),
        max_cost_usd,
        user_id=session["user_id"],
        workspace_identity=identity,
        context=row["context"],
        resume={"message": request.message, "last_seq": newest.seq if newest else 0},
    )


def resumed_limits(row: dict[str, Any], request: schemas.ResumeRequest) -> tuple[int, float | None]:
    """The task's new total iteration limit and cost budget."""
    more_iterations = request.max_iterations or row["run_max_iterations"] or row["max_iterations"]
    more_cost = request.max_cost_usd or row["run_max_cost_usd"]
    spent = float((row["usage"] or {}).get("cost_usd", 0.0))
    budget = None if more_cost is None else round(spent + more_cost, 6)
    return row["iterations"] + more_iterations, budget


async def resume_interrupted(runtime: Runtime, rows: list[dict[str, Any]]) -> None:
    """`MINIDEVIN_RESUME_INTERRUPTED`: resume what a stopped server left live, oldest
    first (so in each session's order); a task that cannot go on stays failed."""
    for row in rows:
        owner = await runtime.store.task_owner(row["id"])
        try:
            await runtime.resume_task(row["id"], owner=owner)
        except ApiError as exc:  # e.g. its working directory is gone
            log.warning("resume_interrupted_failed", task_id=row["id"], error=exc.detail)
        else:
            log.info("task_resumed_after_restart", task_id=row["id"])
