"""The task row as a projection of the task's events: the one place that writes it.

After its insert, nothing writes a task's `status`, `started_at`,
`completed_at`, `plan`, `iterations`, `usage`, `result` or limits but this
function, applied by the store to each event in the transaction that commits
the event: the row and the log never disagree, not even across a crash.
"""

from __future__ import annotations

from typing import Any

from minidevin.runtime.events import FINAL_STATUSES, Event

# a column whose new value is this keeps its value if it has one (`COALESCE`)
KEEP_FIRST = object()


def task_columns(event: Event) -> dict[str, Any] | None:
    """The task columns `event` sets, or None when it changes nothing of the row."""
    data = event.data
    match event.type:
        case "status":
            status = data["status"]
            columns: dict[str, Any] = {"status": status}
            if status == "running":
                columns["started_at"] = (KEEP_FIRST, event.timestamp)
            elif status in FINAL_STATUSES:
                columns["completed_at"] = event.timestamp
                columns["result"] = data.get("result")
            return columns
        case "resumed":
            return {
                "status": "queued",
                "completed_at": None,
                "result": None,
                "max_iterations": data["max_iterations"],
                "max_cost_usd": data.get("max_cost_usd"),
            }
        case "plan_update":
            return {"plan": data["plan"]}
        case "usage":
            return {"usage": data["usage"], "iterations": data["iteration"]}
    return None
