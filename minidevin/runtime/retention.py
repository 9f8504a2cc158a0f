"""Retention: finished tasks older than `MINIDEVIN_RETENTION_DAYS` go, a little at a time.

`RetentionSweeper` runs `sweep` at start and every `SWEEP_INTERVAL_SECONDS` while
the setting is set. A sweep finds tasks in a final status (completed, failed,
stopped) whose end is older than the retention, `TASK_BATCH` at a time, and
deletes each one's events `EVENT_BATCH` at a time (each batch a short transaction
in the store's writer, in turn with everything else the server writes, and the
loop free between them), then the task row, its artifact rows and its artifact
files. Live and queued tasks are never touched, nor sessions (only their old
tasks go). A task is deleted under its session's lock (`lock_for`), so it is not
resumed meanwhile; one that was resumed or ended again since it was found stays.
Idempotency-Key responses older than their day are forgotten too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from minidevin.runtime.artifacts import remove_artifact_files
from minidevin.runtime.storage import Store, StoreError

log = structlog.get_logger(__name__)
SWEEP_INTERVAL_SECONDS = 300.0
TASK_BATCH = 100  # tasks found a query
EVENT_BATCH = 2000  # events deleted a transaction
RESPONSE_TTL_SECONDS = 24 * 3600  # (as `http/idempotency.py`'s `TTL_SECONDS`)
LockFor = Callable[[str], AbstractAsyncContextManager[object]]


@dataclass
class SweepResult:
    tasks: int = 0
    events: int = 0
    artifacts: int = 0


def cutoff(retention_days: float, now: datetime) -> str:
    """The end before which a task is expired, as the store's timestamps are written."""
    moment = now.astimezone(UTC) - timedelta(days=retention_days)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def sweep(
    store: Store,
    artifacts_dir: Path,
    retention_days: float,
    *,
    now: datetime | None = None,
    lock_for: LockFor | None = None,
    event_batch: int = EVENT_BATCH,
    task_batch: int = TASK_BATCH,
) -> SweepResult:
    """Delete every task that ended more than `retention_days` before `now` (default:
    the current time), with its events and artifacts; returns what went."""
    before = cutoff(retention_days, now or datetime.now(UTC))
    result = SweepResult()
    skipped: set[str] = set()  # found but not deleted (resumed meanwhile): not again
    while True:
        found = await store.expired_tasks(before, task_batch + len(skipped))
        rows = [row for row in found if row["id"] not in skipped]
        if not rows:
            break
        for row in rows:
            lock = lock_for(row["session_id"]) if lock_for else contextlib.nullcontext()
            async with lock:
                deleted = await _delete_task(store, row["id"], before, event_batch, result)
            if deleted is None:
                skipped.add(row["id"])
                continue
            await asyncio.to_thread(remove_artifact_files, artifacts_dir, deleted)
            result.tasks += 1
            result.artifacts += len(deleted)
        if len(found) < task_batch + len(skipped):
            break
    return result


async def _delete_task(
    store: Store, task_id: str, before: str, event_batch: int, result: SweepResult
) -> list[str] | None:
    # still expired (not resumed since it was found)? then its events go, batch by batch
    if not await store.task_expired(task_id, before):
        return None
    while deleted := await store.delete_events_batch(task_id, event_batch):
        result.events += deleted
        await asyncio.sleep(0)  # the loop's other work between two batches
    return await store.delete_expired_task(task_id, before)


class RetentionSweeper:
    """Sweeps at start and then every `interval` seconds, in the background."""

    def __init__(
        self,
        store: Store,
        artifacts_dir: Path,
        retention_days: float,
        *,
        lock_for: LockFor | None = None,
        interval: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self.store = store
        self.artifacts_dir = artifacts_dir
        self.retention_days = retention_days
        self.lock_for = lock_for
        self.interval = interval
        self.sweeps = 0  # completed sweeps
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def sweep_once(self) -> SweepResult:
        started = time.monotonic()
        await self.store.forget_responses(time.time() - RESPONSE_TTL_SECONDS)
        result = await sweep(
            self.store, self.artifacts_dir, self.retention_days, lock_for=self.lock_for
        )
        self.sweeps += 1
        log.info(
            "retention_swept",
            tasks=result.tasks,
            events=result.events,
            artifacts=result.artifacts,
            retention_days=self.retention_days,
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except StoreError as exc:  # the store is busy or full: next time
                log.warning("retention_sweep_failed", error=str(exc))
            except Exception:
                log.exception("retention_sweep_failed")
            await asyncio.sleep(self.interval)
