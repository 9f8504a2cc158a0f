"""Startup recovery: what a previous server process left live ends as `failed`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog

from minidevin.runtime.event_types import Error, Status
from minidevin.runtime.events import TaskEventLog
from minidevin.runtime.storage import Store
from minidevin.runtime.tools.environment import kill_task_processes

log = structlog.get_logger(__name__)
LIVE_STATUSES = ("queued", "running", "waiting_input")


async def fail_interrupted_tasks(store: Store, data_dir: Path) -> list[dict[str, Any]]:
    """Tasks a previous process left running or queued end as `failed` (INTERRUPTED);
    returns their rows, oldest first (to resume them with `MINIDEVIN_RESUME_INTERRUPTED`).

    Whatever their commands left behind (found by the `MINIDEVIN_TASK_ID` in
    their environment) is killed first.
    """
    rows = await store.tasks_with_status(LIVE_STATUSES)
    # always: a killed server's commands may outlive even tasks it had ended
    ids = {row["id"] for row in rows}
    killed = await asyncio.to_thread(kill_task_processes, ids, data_dir)
    if killed:
        log.warning("reaped_orphaned_processes", count=killed)
    for row in rows:
        newest = await store.last_event(row["id"])
        events = TaskEventLog(row["id"], store.append, newest.seq if newest else 0)
        events.emit(Error(error="The server stopped while the task was live", code="INTERRUPTED"))
        events.emit(Status(status="failed", message="Task interrupted by a server restart"))
    await store.flush()
    return rows
