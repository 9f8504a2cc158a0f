"""Startup recovery: rows repaired from their logs, live tasks failed, the queue kept.

What a previous server process left behind is settled before anything runs:

1. a task whose row disagrees with its log (a database an older version wrote,
   whose task could end in two commits) gets its log's projection again;
2. whatever a task's commands left running is killed;
3. a task that was live (it had started since it was created or last resumed)
   ends `failed` with an `error` `INTERRUPTED`;
4. a task that was only queued stays `queued`: the caller hands it back to its
   session (`minidevin.resume.restart_queue`), in creation order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from minidevin.runtime import tracing
from minidevin.runtime.event_types import Error, Status
from minidevin.runtime.events import FINAL_STATUSES, Event, TaskEventLog
from minidevin.runtime.projection import KEEP_FIRST, task_columns
from minidevin.runtime.storage import Store
from minidevin.runtime.tools.environment import kill_task_processes

log = structlog.get_logger(__name__)
LIVE_STATUSES = ("queued", "running", "waiting_input", "waiting_approval")
ALL_STATUSES = (*LIVE_STATUSES, *sorted(FINAL_STATUSES))


@dataclass
class Recovered:
    """The tasks a previous process left live, each list oldest first."""

    interrupted: list[dict[str, Any]] = field(default_factory=list)  # now failed INTERRUPTED
    queued: list[dict[str, Any]] = field(default_factory=list)  # never started: still queued
    repaired: list[str] = field(default_factory=list)  # rows set again from their logs


async def recover_tasks(
    store: Store, data_dir: Path, runs_here: Callable[[str], Awaitable[bool]] | None = None
) -> Recovered:
    """Repair rows from their logs, reap orphaned commands, fail what was live, keep the
    queue (see the module's docstring). With nodes, only the tasks of sessions that
    `runs_here` (by session id): the others' live tasks are their nodes'."""
    recovered = Recovered(repaired=await repair_task_rows(store))
    rows = await store.tasks_with_status(LIVE_STATUSES)
    if runs_here is not None:
        rows = [row for row in rows if await runs_here(row["session_id"])]
    # always: a killed server's commands may outlive even tasks it had ended
    ids = {row["id"] for row in rows}
    killed = await asyncio.to_thread(kill_task_processes, ids, data_dir)
    if killed:
        log.warning("reaped_orphaned_processes", count=killed)
    await settle_live(store, rows, recovered)
    if recovered.queued:
        log.info("queued_tasks_kept", count=len(recovered.queued))
    return recovered


async def settle_live(
    store: Store,
    rows: list[dict[str, Any]],
    into: Recovered,
    why: str = "The server stopped while the task was live",
) -> None:
    """Live rows whose runner is gone: what never started stays queued (`into.queued`), the
    rest ends `failed` with an `error` `INTERRUPTED` (`into.interrupted`)."""
    for row in rows:
        if row["status"] == "queued" and not started(await store.task_log(row["id"])):
            into.queued.append(row)
            continue
        newest = await store.last_event(row["id"])
        last_seen = newest.timestamp if newest else None
        tracing.interrupted_run(
            row["id"], row.get("session_id", ""), row.get("started_at"), last_seen, why
        )
        events = TaskEventLog(row["id"], store.append, newest.seq if newest else 0)
        events.emit(Error(error=why, code="INTERRUPTED"))
        events.emit(Status(status="failed", message="Task interrupted by a server restart"))
        into.interrupted.append(row)
    await store.flush()


def started(task_log: list[Event]) -> bool:
    """True if the task went `running` since it was created or last resumed."""
    running = False
    for event in task_log:
        if event.type == "resumed":
            running = False
        elif event.type == "status" and event.data.get("status") == "running":
            running = True
    return running


async def repair_task_rows(store: Store) -> list[str]:
    """Give every task whose row disagrees with its log the log's projection again;
    returns their ids.

    A task agrees at a glance when its newest event is a `status` the row shows (with
    its end time when final); otherwise its log is folded and compared. A repair
    appends the log's projecting events once more: the store keeps the events it
    has (same task and seq) and applies their projection to the row, in order.
    """
    repaired = []
    for row in await store.tasks_with_status(ALL_STATUSES):
        newest = await store.last_event(row["id"])
        if newest is None or agrees(row, newest):
            continue
        task_log = await store.task_log(row["id"])
        projected = projection(task_log)
        if all(row.get(name) == projected.get(name) for name in ("status", "completed_at")):
            continue
        for event in task_log:
            if task_columns(event) is not None:
                store.append(event)
        repaired.append(row["id"])
        log.warning(
            "task_row_repaired",
            task_id=row["id"],
            row_status=row["status"],
            log_status=projected.get("status"),
        )
    if repaired:
        await store.flush()
    return repaired


def agrees(row: dict[str, Any], newest: Event) -> bool:
    """True if the task's newest event is a `status` its row already shows."""
    if newest.type != "status" or row["status"] != newest.data.get("status"):
        return False
    return row["status"] not in FINAL_STATUSES or row.get("completed_at") == newest.timestamp


def projection(task_log: list[Event]) -> dict[str, Any]:
    """The task columns its log sets, folded in order (`runtime/projection.py`)."""
    columns: dict[str, Any] = {}
    for event in task_log:
        for name, value in (task_columns(event) or {}).items():
            if isinstance(value, tuple) and value[0] is KEEP_FIRST:
                columns.setdefault(name, value[1])
            else:
                columns[name] = value
    return columns
