"""Resuming a task: which tasks may go on, and with what limits.

`POST /api/tasks/{id}/resume` (and `Runtime.resume_task`) continues a task that
ended `failed` or `stopped`: same id, its log goes on, its conversation is
rebuilt from the log. It may take `max_iterations` more model turns (default:
as many as it was created with) and spend `max_cost_usd` more (default: its
original budget again; none if it had none). A completed task is continued by
a follow-up task in its session instead.

At start (`restart_queue`), tasks a stopped server left queued are handed back
to their sessions, in creation order, with their ids and logs; the ones it left
live (failed `INTERRUPTED`) are resumed among them when
`MINIDEVIN_RESUME_INTERRUPTED` is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from minidevin.actors.messages import TaskSpec
from minidevin.runtime import schemas
from minidevin.runtime.errors import ApiError, Conflict, NotFound
from minidevin.runtime.event_types import Error, Status
from minidevin.runtime.events import Event, TaskEventLog
from minidevin.runtime.recovery import Recovered

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
        approval_policy=row["approval_policy"],
    )


def resumed_limits(row: dict[str, Any], request: schemas.ResumeRequest) -> tuple[int, float | None]:
    """The task's new total iteration limit and cost budget."""
    more_iterations = request.max_iterations or row["run_max_iterations"] or row["max_iterations"]
    more_cost = request.max_cost_usd or row["run_max_cost_usd"]
    spent = float((row["usage"] or {}).get("cost_usd", 0.0))
    budget = None if more_cost is None else round(spent + more_cost, 6)
    return row["iterations"] + more_iterations, budget


async def restart_queue(runtime: Runtime, recovered: Recovered, *, resume: bool) -> None:
    """Hand back to their sessions the tasks left queued (and, with `resume`, resume the
    ones left live), oldest first: each session runs them in the order they were created."""
    rows = [(row, True) for row in recovered.queued]
    if resume:
        rows += [(row, False) for row in recovered.interrupted]
    rows.sort(key=lambda pair: pair[0]["created_at"])  # (stable: ties keep their order)
    for row, queued in rows:
        if queued:
            await requeue(runtime, row)
        else:
            await resume_interrupted(runtime, [row])


async def requeue(runtime: Runtime, row: dict[str, Any]) -> None:
    """Queue again a task that never started (same id, its log goes on); if it cannot
    run any more (e.g. its working directory is gone), it ends `failed` saying why."""
    store = runtime.store
    newest = await store.last_event(row["id"])
    try:
        owner = await store.task_owner(row["id"])
        session = await store.session_row(row["session_id"], owner or "")
        if owner is None or session is None:
            raise NotFound("its session is gone")
        model, identity = await runtime.admission.admit(
            session, row["model"], await runtime.owner(None)
        )
        spec = runtime._with_mcp(requeued_spec(row, session, model, identity, newest), session)
    except ApiError as exc:  # (also a secrets key that cannot open its MCP servers)
        events = TaskEventLog(row["id"], store.append, newest.seq if newest else 0)
        reason = f"The queued task cannot run after the server restart: {exc.detail}"
        events.emit(Error(error=reason, code="REQUEUE_FAILED"))
        events.emit(Status(status="failed", message="Task could not be queued again"))
        await store.flush()
        log.warning("requeue_failed", task_id=row["id"], error=exc.detail)
        return
    status = await runtime._submit(spec)  # (at start: nothing else submits meanwhile)
    log.info("task_requeued_after_restart", task_id=row["id"], status=status)


def requeued_spec(
    row: dict[str, Any],
    session: dict[str, Any],
    model: str,
    identity: tuple[int, int],
    newest: Event | None,
) -> TaskSpec:
    """A queued task's spec again, from its row (its limits as its log last set them)."""
    return TaskSpec(
        row["id"],
        row["session_id"],
        row["description"],
        model,
        row["run_mode"],
        row["max_iterations"],
        Path(session["working_directory"]),
        row["max_cost_usd"],
        user_id=session["user_id"],
        workspace_identity=identity,
        context=row["context"],
        resume={"message": None, "last_seq": newest.seq if newest else 0},
        requeued=True,
        approval_policy=row["approval_policy"],
    )


async def resume_interrupted(runtime: Runtime, rows: list[dict[str, Any]]) -> None:
    """`MINIDEVIN_RESUME_INTERRUPTED`: resume what a stopped server left live, in the order
    given; a task that cannot go on stays failed."""
    for row in rows:
        owner = await runtime.store.task_owner(row["id"])
        try:
            await runtime.resume_task(row["id"], owner=owner)
        except ApiError as exc:  # e.g. its working directory is gone
            log.warning("resume_interrupted_failed", task_id=row["id"], error=exc.detail)
        else:
            log.info("task_resumed_after_restart", task_id=row["id"])
