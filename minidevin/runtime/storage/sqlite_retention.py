"""SQLite statements for retention (`runtime/retention.py`) and the offline vacuum.

Deleting an old task is many short transactions, not one long one: its events go
a batch at a time through the engine's writer (in order with everything else
queued), then the task row (its artifact rows follow by `ON DELETE CASCADE`).
`vacuum` is for `minidevin db vacuum`, while no server holds the data directory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from minidevin.runtime.storage.sqlite_engine import SqliteEngine

FINAL = ("completed", "failed", "stopped")
_MARKS = ", ".join("?" for _ in FINAL)
# a final task that ended before the parameter (one with no end: created before it)
_EXPIRED = f"status IN ({_MARKS}) AND COALESCE(completed_at, created_at) < ?"


class SqliteRetention(SqliteEngine):
    """The retention half of `SqliteStore` (see `interface.Repository`)."""

    async def forget_responses(self, before: float) -> None:
        await self.write("DELETE FROM idempotency_keys WHERE created_at < ?", (before,))

    async def expired_tasks(self, before: str, limit: int) -> list[dict[str, Any]]:
        return await self.fetch_all(
            f"SELECT id, session_id FROM tasks WHERE {_EXPIRED} ORDER BY rowid LIMIT ?",
            (*FINAL, before, limit),
        )

    async def task_expired(self, task_id: str, before: str) -> bool:
        return bool(
            await self.fetch_one(
                f"SELECT 1 FROM tasks WHERE id = ? AND {_EXPIRED}", (task_id, *FINAL, before)
            )
        )

    async def delete_events_batch(self, task_id: str, limit: int) -> int:
        row = await self.fetch_one(
            "SELECT count(*) AS n, max(seq) AS last FROM "
            "(SELECT seq FROM events WHERE task_id = ? ORDER BY seq LIMIT ?)",
            (task_id, limit),
        )
        if row is None or not row["n"]:
            return 0
        await self.write(
            "DELETE FROM events WHERE task_id = ? AND seq <= ?", (task_id, row["last"])
        )
        return int(row["n"])

    async def delete_expired_task(self, task_id: str, before: str) -> list[str] | None:
        if not await self.task_expired(task_id, before):
            return None
        artifacts = await self.fetch_all("SELECT id FROM artifacts WHERE task_id = ?", (task_id,))
        await self.write(
            f"DELETE FROM tasks WHERE id = ? AND {_EXPIRED}", (task_id, *FINAL, before)
        )
        return [row["id"] for row in artifacts]


def database_bytes(path: Path) -> int:
    """The database's size on disk: the file and its write-ahead log."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def vacuum(path: Path) -> None:
    """Fold the write-ahead log into the file and rebuild it without its free pages.

    Offline only: the caller holds the data directory's lock. `sqlite3.Error` when the
    database cannot be opened or written.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no database at {path}")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
