"""The SQLite engine under `SqliteStore`: one batching writer, two readers, on the loop.

Writes are `Write` ops (SQL and parameters) and events, queued in order from
any thread; the writer commits them in batches (one transaction per batch),
applies each event's task-row projection in that transaction, and only then
hands the batch's events to `on_events_committed`, so whatever a client is
shown is on disk. Callers that must acknowledge a write (`await
self.write(...)`) wait for its commit. Reads use their own connections (WAL
lets them run beside writes). Only the storage package uses this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from minidevin.runtime.events import Event
from minidevin.runtime.projection import KEEP_FIRST, task_columns
from minidevin.runtime.storage.interface import AlreadyExists, StoreError
from minidevin.runtime.storage.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

log = structlog.get_logger(__name__)
# aiosqlite logs each call with its statement parameters (password hashes, key
# hashes...) at debug level: never let those through, whatever the log level
logging.getLogger("aiosqlite").setLevel(logging.INFO)
MAX_BATCH = 2000
T = TypeVar("T")
# SQLite errors worth waiting out: another process holds the lock, the disk is full
TRANSIENT_ERRORS = ("locked", "busy", "full")
JSON_COLUMNS = frozenset({"plan", "result", "usage"})


@dataclass(frozen=True)
class Write:
    """One statement for the writer; `done` (optional) learns when it committed."""

    sql: str
    params: Sequence[Any] = ()
    done: asyncio.Future[None] | None = field(default=None, compare=False)


def encode_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _private_file(path: Path) -> None:
    """Create `path` (0600) if absent, so SQLite's -wal and -shm files get 0600 too."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        extra = Path(f"{path}{suffix}")
        if extra.exists() and not extra.is_symlink():
            extra.chmod(0o600)


class SqliteEngine:
    def __init__(self, path: Path, *, retry_seconds: float = 10.0) -> None:
        self.path = path
        self.retry_seconds = retry_seconds
        # bumped after every committed batch with a write other than events: a
        # read cached at generation N is current while the generation is still N
        self.generation = 0
        self.on_events_committed: Callable[[list[Event]], None] = lambda events: None
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._point_reader: sqlite3.Connection | None = None  # used on the loop thread only
        self._queue: asyncio.Queue[Write | Event] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._projected = False  # the last committed batch changed a task row

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_file(self.path)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._writer = await self._connect()
        await self._migrate(self._writer)
        self._reader = await self._connect()
        self._point_reader = sqlite3.connect(self.path, isolation_level=None)
        self._point_reader.row_factory = sqlite3.Row
        self._point_reader.execute("PRAGMA busy_timeout=200")
        self._writer_task = asyncio.create_task(self._write_forever(), name="store-writer")

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            "busy_timeout=200",  # short: the writer waits out locks itself, in steps
        ):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        (version,) = await (await conn.execute("PRAGMA user_version")).fetchone()  # type: ignore[misc]
        if version > SCHEMA_VERSION:
            await conn.close()
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this minidevin "
                f"understands ({SCHEMA_VERSION}); upgrade minidevin or use another data directory"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")
            await conn.execute("COMMIT")
            log.info("store_migrated", version=number)

    async def close(self) -> None:
        if self._writer_task is not None:
            await self.flush()
            self._writer_task.cancel()
            await asyncio.gather(self._writer_task, return_exceptions=True)
            self._writer_task = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        if self._point_reader is not None:
            self._point_reader.close()
        self._reader = self._writer = self._point_reader = None

    # -- writing -----------------------------------------------------------

    def append(self, event: Event) -> None:
        """Queue an event from any thread; never blocks."""
        self.submit(event)

    def submit(self, item: Write | Event) -> None:
        """Queue a write or an event from any thread; never blocks."""
        if threading.get_ident() == self._loop_thread:
            self._queue.put_nowait(item)
        else:
            assert self._loop is not None, "store is not open"
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one statement and wait until it is committed."""
        done = asyncio.get_running_loop().create_future()
        self.submit(Write(sql, params, done))
        await done

    def call_blocking(self, read: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """From another thread (an actor): run `read()` on the store's loop once everything
        queued so far is committed, and wait for its answer."""
        assert self._loop is not None and threading.get_ident() != self._loop_thread

        async def flushed() -> T:
            await self.flush()
            return await read()

        return asyncio.run_coroutine_threadsafe(flushed(), self._loop).result(timeout)

    async def flush(self) -> None:
        """Wait until everything queued before this call is committed."""
        await self.write("SELECT 1")

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_patiently(batch)
            except Exception as exc:
                log.error("store_batch_failed", error=str(exc), size=len(batch))
                for item in batch:  # isolate the bad statement; keep the rest
                    try:
                        await self._commit([item])
                    except Exception as item_exc:
                        self._finish([item], item_exc)
                    else:
                        self._finish([item], None)
                continue
            self._finish(batch, None)

    async def _commit_patiently(self, batch: list[Write | Event]) -> None:
        """Commit; while the database is locked, busy or full, wait and try again."""
        delay, started = 0.05, time.monotonic()
        while True:
            try:
                await self._commit(batch)
                return
            except sqlite3.OperationalError as exc:
                waited = time.monotonic() - started
                transient = any(word in str(exc) for word in TRANSIENT_ERRORS)
                if not transient or waited + delay > self.retry_seconds:
                    raise
                log.warning("store_write_retrying", error=str(exc), waited=round(waited, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _commit(self, batch: list[Write | Event]) -> None:
        assert self._writer is not None
        await self._writer.execute("BEGIN IMMEDIATE")
        projected = False
        try:
            events: list[tuple[str, int, str, str, str]] = []
            for item in batch:
                if isinstance(item, Event):
                    events.append(
                        (item.task_id, item.seq, item.type, encode_json(item.data), item.timestamp)
                    )
                    columns = task_columns(item)
                    if columns is not None:  # the row follows its log, in the same commit
                        await self._insert_events(events)
                        events = []
                        await self._project(item.task_id, columns)
                        projected = True
                    continue
                if events:
                    await self._insert_events(events)
                    events = []
                await self._writer.execute(item.sql, item.params)
            if events:
                await self._insert_events(events)
            await self._writer.execute("COMMIT")
            self._projected = projected
        except BaseException:
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")
            raise

    async def _insert_events(self, rows: list[tuple[str, int, str, str, str]]) -> None:
        assert self._writer is not None
        await self._writer.executemany(
            "INSERT OR IGNORE INTO events (task_id, seq, type, data, timestamp) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    async def _project(self, task_id: str, columns: dict[str, Any]) -> None:
        """Apply an event's projection (`runtime/projection.py`) to its task's row."""
        assert self._writer is not None
        assignments, values = [], []
        for name, value in columns.items():
            if isinstance(value, tuple) and value[0] is KEEP_FIRST:
                assignments.append(f"{name} = COALESCE({name}, ?)")
                value = value[1]
            else:
                assignments.append(f"{name} = ?")
            values.append(encode_json(value) if name in JSON_COLUMNS else value)
        await self._writer.execute(
            f"UPDATE tasks SET {', '.join(assignments)} WHERE id = ?", (*values, task_id)
        )

    def _finish(self, batch: list[Write | Event], error: Exception | None) -> None:
        events = [item for item in batch if isinstance(item, Event)]
        projected, self._projected = self._projected, False
        if len(events) < len(batch) or projected:
            self.generation += 1  # before anyone is told: their next read is fresh
        for item in batch:
            if isinstance(item, Write) and item.done is not None and not item.done.done():
                if error is None:
                    item.done.set_result(None)
                else:
                    item.done.set_exception(_store_error(error))
        if events and error is None:
            try:
                self.on_events_committed(events)
            except Exception:
                log.exception("event_fanout_failed")

    # -- reading -----------------------------------------------------------

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        assert self._reader is not None, "store is not open"
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"read failed: {exc}") from exc
        return [dict(row) for row in rows]

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    def fetch_point(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A read through an index of a few rows, right here on the loop thread.

        Microseconds, where a hop to the reader thread costs tens: for the lookups
        every request makes (credentials, the session or task it names). WAL
        readers never wait for the writer. Not for scans: use `fetch_all`.
        """
        assert self._point_reader is not None, "store is not open"
        try:
            return [dict(row) for row in self._point_reader.execute(sql, params).fetchall()]
        except sqlite3.OperationalError as exc:
            raise StoreError(f"read failed: {exc}") from exc


def _store_error(error: Exception) -> StoreError:
    """A failed write as the interface's error (a duplicate unique value: `AlreadyExists`)."""
    if isinstance(error, sqlite3.IntegrityError) and "UNIQUE" in str(error):
        return AlreadyExists(f"write failed: {error}")
    return StoreError(f"write failed: {error}")
