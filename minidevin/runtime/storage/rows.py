"""Rows and the API's models: a session's optional columns, a task row as the API's task.

Shared by the backends (and, for `task_detail`, the runtime), with no SQL in it.
"""

from __future__ import annotations

import json
from typing import Any

from minidevin.runtime import schemas

# a session's optional columns, with what a row holds when the option is not given
SESSION_OPTIONS: dict[str, Any] = {
    "webhook_url": None,
    "webhook_secret": None,  # sealed with the secrets key
    "secrets": [],  # names of the user's secrets its commands get
    "approval_policy": "never",
    "mcp_servers": [],  # as the API shows them (values hidden)
    "mcp_config": None,  # the whole configuration, sealed with the secrets key
    "node": None,  # with nodes: the node it runs on (`minidevin/nodes.py`)
}


def session_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` as the session row's columns (JSON text for lists); `TypeError` for an
    unknown one."""
    if unknown := set(options) - set(SESSION_OPTIONS):
        raise TypeError(f"unknown session options: {', '.join(sorted(unknown))}")
    row = {**SESSION_OPTIONS, **options}
    return {
        name: json.dumps(value) if isinstance(value, list) else value for name, value in row.items()
    }


def task_detail(row: dict[str, Any]) -> schemas.TaskDetail:
    """A task row (from `Repository.task_row`) as the API's task."""
    result = row["result"]
    return schemas.TaskDetail(
        id=row["id"],
        session_id=row["session_id"],
        description=row["description"],
        status=row["status"],
        model=row["model"],
        run_mode=row["run_mode"],
        max_iterations=row["max_iterations"],
        max_cost_usd=row["max_cost_usd"],
        context=row["context"],
        approval_policy=row.get("approval_policy") or "never",
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        iterations=row["iterations"],
        plan=schemas.Plan(**(row["plan"] or {"steps": []})),
        result=schemas.TaskResult(**result) if result else None,
        usage=schemas.Usage(**(row["usage"] or {})),
    )
