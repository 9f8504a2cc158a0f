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
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from minidevin.runtime import metrics
from minidevin.runtime.events import Event
from minidevin.runtime.storage.interface import AlreadyExists, StoreError
from minidevin.runtime.storage.open_errors import OPEN_TIMEOUT_MAX, open_problem
from minidevin.runtime.storage.outage import StoreOutage, storage_unavailable
from minidevin.runtime.storage.sqlite_batch import Write, commit_batch
from minidevin.runtime.storage.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

log = structlog.get_logger(__name__)
# aiosqlite logs each call with its statement parameters (password hashes, key
# hashes...) at debug level: never let those through, whatever the log level
logging.getLogger("aiosqlite").setLevel(logging.INFO)
MAX_BATCH = 2000
T = TypeVar("T")
# SQLite errors worth waiting out at open: another process holds the lock, the disk is full
TRANSIENT_ERRORS = ("locked", "busy", "full")


def _private_file(path: Path) -> None:
    """Create `path` (0600) if absent, so SQLite's -wal and -shm files get 0600 too."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        extra = Path(f"{path}{suffix}")
        if extra.exists() and not extra.is_symlink():
            extra.chmod(0o600)


class SqliteEngine:
    def __init__(self, path: Path, *, retry_seconds: float = 10.0, sync: str = "normal") -> None:
        self.path = path
        self.retry_seconds = retry_seconds
        self.sync = sync  # SQLite's `synchronous`: "normal" (crash-safe) or "full" (power-safe)
        # bumped after every committed batch with a write other than events: a
        # read cached at generation N is current while the generation is still N
        self.generation = 0
        self.on_events_committed: Callable[[list[Event]], None] = lambda events: None
        self.outage = StoreOutage(retry_seconds)
        self._held: list[Write | Event] = []  # the batch the writer retries while the store is down
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._point_reader: sqlite3.Connection | None = None  # used on the loop thread only
        self._queue: asyncio.Queue[Write | Event] = asyncio.Queue()
        self._pending: list[Write | Event] = []  # from other threads, not yet in `_queue`
        self._pending_lock = threading.Lock()
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._projected = False  # the last committed batch changed a task row

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Open and migrate the database, or raise `StoreError` saying why it cannot be.

        A lock another process holds is waited out for `open_timeout` seconds (the
        store's retry time, at most `OPEN_TIMEOUT_MAX`); a read-only or corrupt
        database fails at once. Nothing stays open after a failure (an unclosed
        connection's thread would keep the process from exiting).
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        started, delay = time.monotonic(), 0.05
        while True:
            try:
                await self._open_once()
                break
            except (sqlite3.Error, OSError) as exc:
                await self._close_connections()
                waited = time.monotonic() - started
                if not _transient(exc) or waited + delay > self.open_timeout:
                    raise StoreError(open_problem(self.path, exc, waited)) from None
                log.warning("store_open_retrying", error=str(exc), waited=round(waited, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except BaseException:
                await self._close_connections()
                raise
        self._retry_now = asyncio.Event()
        self._writer_task = asyncio.create_task(self._write_forever(), name="store-writer")

    @property
    def open_timeout(self) -> float:
        return min(self.retry_seconds, OPEN_TIMEOUT_MAX)

    async def _open_once(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_file(self.path)
        self._writer = await self._connect()
        await self._migrate(self._writer)
        # can this process write at all (no other holds the lock, the file is writable)?
        await self._writer.execute("BEGIN IMMEDIATE")
        await self._writer.execute("ROLLBACK")
        self._reader = await self._connect()
        self._point_reader = sqlite3.connect(self.path, isolation_level=None)
        self._point_reader.row_factory = sqlite3.Row
        self._point_reader.execute("PRAGMA busy_timeout=200")

    async def _close_connections(self) -> None:
        """Close whatever connections are open (each, whatever the others do)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        if self._point_reader is not None:
            with contextlib.suppress(Exception):
                self._point_reader.close()
        self._reader = self._writer = self._point_reader = None

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = aiosqlite.Row
            for pragma in (
                "busy_timeout=200",  # short: the writer waits out locks itself, in steps
                "journal_mode=WAL",
                f"synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}",
                "foreign_keys=ON",
            ):
                await conn.execute(f"PRAGMA {pragma}")
            # the schema parses (a damaged first page or schema fails here, not later)
            # (read to the end: a statement left open would pin this connection's snapshot)
            await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")
        except BaseException:
            await conn.close()
            raise
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
            try:
                await self.flush()
            except StoreError:
                # (not acknowledged to anyone: the next start ends their tasks from the log)
                log.error("store_closed_holding", events=self.held_events, held=len(self._held))
            finally:  # (a flush that failed still closes: open connections keep a process)
                self._writer_task.cancel()
                await asyncio.gather(self._writer_task, return_exceptions=True)
                self._writer_task = None
        await self._close_connections()

    # -- writing -----------------------------------------------------------

    def append(self, event: Event) -> None:
        """Queue an event from any thread; never blocks."""
        self.submit(event)

    def submit(self, item: Write | Event) -> None:
        """Queue a write or an event from any thread; never blocks.

        From another thread, items wait in `_pending` and the loop is woken once for
        all that arrive before it takes them (not once an item: on a busy server
        each wake-up is a syscall and a wait for the GIL, on both sides).
        """
        if threading.get_ident() == self._loop_thread:
            self._take_pending()  # (keep the order of what came before)
            self._queue.put_nowait(item)
            return
        assert self._loop is not None, "store is not open"
        with self._pending_lock:
            self._pending.append(item)
            wake, self._wake_scheduled = not self._wake_scheduled, True
        if wake:
            self._loop.call_soon_threadsafe(self._take_pending)

    def _take_pending(self) -> None:
        """On the loop: move what other threads submitted to the writer's queue, in order."""
        with self._pending_lock:
            items, self._pending = self._pending, []
            self._wake_scheduled = False
        for item in items:
            self._queue.put_nowait(item)

    async def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one statement and wait until it is committed.

        While the store is down, the writer tries again at once for it: past the
        retry window it fails after that one attempt (`StoreError`), and it
        succeeds as soon as the store is back.
        """
        done = asyncio.get_running_loop().create_future()
        self.submit(Write(sql, params, done))
        if self.outage.down:
            self._retry_now.set()
        await done

    def wait_for_room(self, unblocked: threading.Event | None = None) -> str | None:
        """From an emitting thread: wait while the store cannot commit (see `StoreOutage`).

        On the loop's own thread, never waits (the writer runs there).
        """
        if threading.get_ident() == self._loop_thread:
            return None
        return self.outage.wait_for_room(unblocked)

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
            self._take_queued(batch, MAX_BATCH)
            started = time.monotonic()
            try:
                await self._commit_patiently(batch)
                metrics.observe_commit(len(batch), time.monotonic() - started)
            except Exception as exc:
                log.error("store_batch_failed", error=str(exc), size=len(batch))
                for item in batch:  # isolate the statement the database refuses; keep the rest
                    try:
                        await self._commit_patiently([item], take_queued=False)
                    except Exception as item_exc:
                        self._finish([item], item_exc)
                    else:
                        self._finish([item], None)
                continue
            self._finish(batch, None)

    def _take_queued(self, batch: list[Write | Event], limit: int | None = None) -> None:
        while (limit is None or len(batch) < limit) and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _commit_patiently(
        self, batch: list[Write | Event], *, take_queued: bool = True
    ) -> None:
        """Commit `batch`; while the storage fails (locked, full, read-only), hold and retry.

        Nothing held is dropped, however long the outage: what is queued meanwhile
        joins the batch, in order (unless `take_queued` is off: one item alone). Past
        the retry window, the writes a caller awaits
        are failed (and taken out), so requests get a 503 while events wait. Raises
        only for a failure of a statement itself.
        """
        delay = 0.05
        self._held = batch
        try:
            while True:
                try:
                    await self._commit(batch)
                    break
                except (sqlite3.Error, OSError) as exc:
                    if not storage_unavailable(exc):
                        raise
                    self.outage.begin(str(exc))
                    if self.outage.expired():
                        self._fail_awaited(batch)
                    self._retry_now.clear()
                    with contextlib.suppress(TimeoutError):  # (a new write cuts the wait)
                        await asyncio.wait_for(self._retry_now.wait(), delay)
                    delay = min(delay * 2, 1.0)
                    if take_queued:
                        self._take_queued(batch)
            if self.outage.down:
                self.outage.end(self.held_events, len(batch) - self.held_events)
        finally:
            self._held = []

    @property
    def held(self) -> list[Event]:
        """The events the writer holds because the store cannot commit them yet."""
        return [item for item in self._held if isinstance(item, Event)]

    @property
    def held_events(self) -> int:
        return len(self.held)

    def _fail_awaited(self, batch: list[Write | Event]) -> None:
        error = StoreError(f"write failed: {self.outage.detail()}")
        kept: list[Write | Event] = []
        for item in batch:
            if isinstance(item, Write) and item.done is not None:
                if not item.done.done():
                    item.done.set_exception(error)
            else:
                kept.append(item)
        batch[:] = kept

    async def _commit(self, batch: list[Write | Event]) -> None:
        """Commit `batch` in one transaction, in one hop to the writer connection's thread.

        One hop, not one per statement: each hop waits for the loop and for that
        thread to get the GIL, which the model threads of a busy server contend for.
        """
        assert self._writer is not None
        # (aiosqlite runs a callable on its connection's thread only through `_execute`)
        self._projected = await self._writer._execute(commit_batch, self._writer._conn, batch)

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

    async def task_status_counts(self) -> dict[str, int]:
        """Tasks by status, for `/metrics` (a scan: on the reader thread)."""
        rows = await self.fetch_all("SELECT status, count(*) AS n FROM tasks GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

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


def _transient(error: BaseException) -> bool:
    """A failure worth waiting out at open: a lock another process holds (a full disk)."""
    return isinstance(error, sqlite3.OperationalError) and any(
        word in str(error) for word in TRANSIENT_ERRORS
    )
