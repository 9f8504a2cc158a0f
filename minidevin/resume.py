"""Resuming a task: which tasks may go on, and with what limits.

`POST /api/tasks/{id}/resume` (and `Runtime.resume_task`) continues a task that
ended `failed` or `stopped`: same id, its log goes on, its conversation is
rebuilt from the log. It may take `max_iterations` more model turns (default:
as many as it was created with) and spend `max_cost_usd` more (default: its
original budget again; none if it had none). A completed task is continued by
a follow-up task in its session instead.
"""

from __future__ import annotations

from typing import Any

from minidevin.runtime import schemas
from minidevin.runtime.errors import Conflict

RESUMABLE = frozenset({"failed", "stopped"})


def check_resumable(row: dict[str, Any]) -> None:
    """`Conflict` (409) unless the task ended `failed` or `stopped`."""
    status = row["status"]
    if status == "completed":
        raise Conflict("the task completed; continue it with a follow-up task in its session")
    if status not in RESUMABLE:
        raise Conflict(f"the task is {status}; only a failed or stopped task can be resumed")


def resumed_limits(row: dict[str, Any], request: schemas.ResumeRequest) -> tuple[int, float | None]:
    """The task's new total iteration limit and cost budget."""
    more_iterations = request.max_iterations or row["run_max_iterations"] or row["max_iterations"]
    more_cost = request.max_cost_usd or row["run_max_cost_usd"]
    spent = float((row["usage"] or {}).get("cost_usd", 0.0))
    budget = None if more_cost is None else round(spent + more_cost, 6)
    return row["iterations"] + more_iterations, budget
