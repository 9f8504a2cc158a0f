"""The PostgreSQL engine under `PostgresStore`: one batching writer and a read pool, on the loop.

The same event sink as the SQLite engine (`sqlite_engine.py`): writes are
`Write` ops and events, queued in order from any thread; the writer commits them
in batches on its own connection (one transaction per batch, each event's
task-row projection and webhook delivery in it) and only then hands the
batch's events to `on_events_committed`. Callers that must acknowledge a write
(`await self.write(...)`) wait for its commit. Reads go through an asyncpg
pool. While the server cannot commit (down, unreachable, full, a lock held past
`LOCK_TIMEOUT`) the writer holds its batch and retries (`StoreOutage`),
reconnecting when its connection was lost. Only the storage package uses this.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

from minidevin.runtime import metrics
from minidevin.runtime.events import Event
from minidevin.runtime.storage.interface import StoreError
from minidevin.runtime.storage.open_errors import OPEN_TIMEOUT_MAX
from minidevin.runtime.storage.outage import StoreOutage
from minidevin.runtime.storage.postgres_batch import Fenced, Write, commit_batch
from minidevin.runtime.storage.postgres_errors import (
    ReadOnlyServer,
    WriterUnreachable,
    connection_broken,
    describe,
    open_problem,
    open_transient,
    storage_unavailable,
    store_error,
    target,
    without_password,
)
from minidevin.runtime.storage.postgres_schema import migrate
from minidevin.runtime.storage.postgres_text import restore_rows, store_params

log = structlog.get_logger(__name__)
MAX_BATCH = 2000
T = TypeVar("T")
LOCK_TIMEOUT = "200ms"  # the writer waits out a held lock itself, in steps (an outage)
IDLE_IN_TRANSACTION = "5s"  # far longer than any batch waits between its statements
COMMAND_TIMEOUT = 30.0  # a server that stops answering is an outage, not a hang
CONNECT_TIMEOUT = 5.0


class PostgresEngine:
    def __init__(self, url: str, *, retry_seconds: float = 10.0, pool_size: int = 10) -> None:
        self._url = url  # (holds the password: never logged, never in a message)
        self.where = target(url)
        self.retry_seconds = retry_seconds
        self.pool_size = pool_size
        # bumped after every committed batch with a write other than events: a
        # read cached at generation N is current while the generation is still N
        self.generation = 0
        self.on_events_committed: Callable[[list[Event]], None] = lambda events: None
        self.outage = StoreOutage(retry_seconds)
        self._held: list[Write | Event] = []  # the batch the writer retries while the store is down
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[Write | Event] = asyncio.Queue()
        self._pending: list[Write | Event] = []  # from other threads, not yet in `_queue`
        self._pending_lock = threading.Lock()
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._projected = False  # the last committed batch changed a task row
        # with nodes: (this node, its generation), checked in every batch (`fence_as`)
        self.fence: tuple[str, int] | None = None
        self.fenced: str | None = None  # why this process may commit nothing more
        self.on_fenced: Callable[[str], None] = lambda why: None

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate, or raise `StoreError` saying why it cannot be.

        A server that is not up yet (refused, starting, too many connections) is
        waited for `open_timeout` seconds; bad credentials, a missing database, a
        read-only standby or a newer schema fail at once. Nothing stays open after
        a failure.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        started, delay = time.monotonic(), 0.05
        while True:
            try:
                await self._open_once()
                break
            except StoreError:
                await self._close_connections()
                raise
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                await self._close_connections()
                waited = time.monotonic() - started
                if not open_transient(exc) or waited + delay > self.open_timeout:
                    problem = open_problem(self.where, exc, waited)
                    raise StoreError(without_password(problem, self._url)) from None
                log.warning("store_open_retrying", error=self._describe(exc),
                            waited=round(waited, 2))  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except (asyncpg.InterfaceError, ValueError) as exc:  # (a URL asyncpg cannot use)
                await self._close_connections()
                problem = f"MINIDEVIN_DATABASE_URL ({self.where}) cannot be used: {exc}"
                raise StoreError(without_password(problem, self._url)) from None
            except BaseException:
                await self._close_connections()
                raise
        self._retry_now = asyncio.Event()
        self._writer_task = asyncio.create_task(self._write_forever(), name="store-writer")

    @property
    def open_timeout(self) -> float:
        return min(self.retry_seconds, OPEN_TIMEOUT_MAX)

    async def _open_once(self) -> None:
        self._writer = await self._connect_writer()
        if await self._writer.fetchval("SHOW transaction_read_only") == "on":
            raise StoreError(open_problem(self.where, ReadOnlyServer(), 0.0))
        for version in await migrate(self._writer, self.where):
            log.info("store_migrated", version=version, database=self.where)
        self._pool = await asyncpg.create_pool(
            self._url,
            min_size=0,  # (no floor to restore, and log about, while the server is down)
            max_size=self.pool_size,
            command_timeout=COMMAND_TIMEOUT,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "minidevin"},
        )
        await self._opened()

    async def _opened(self) -> None:
        """After connecting and migrating: what the store loads once (see `PostgresStore`)."""

    async def _connect_writer(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._url,
            command_timeout=COMMAND_TIMEOUT,
            timeout=CONNECT_TIMEOUT,
            server_settings={
                "lock_timeout": LOCK_TIMEOUT,
                # a process frozen in a batch (paused, partitioned) must not hold its locks,
                # the node generation's share lock among them, for as long as its socket
                # lives: the server ends it (the batch is held and retried, as in an outage)
                "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION,
                "application_name": "minidevin",
            },
        )

    async def _close_connections(self) -> None:
        """Close whatever connections are open (each, whatever the others do)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.close(), 5)
            self._writer.terminate()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except Exception:
                self._pool.terminate()
        self._writer = self._pool = None

    async def close(self) -> None:
        if self._writer_task is not None:
            try:
                await self.flush()
            except StoreError:
                # (not acknowledged to anyone: the next start ends their tasks from the log)
                log.error("store_closed_holding", events=self.held_events, held=len(self._held))
            finally:  # (a flush that failed still closes)
                self._writer_task.cancel()
                await asyncio.gather(self._writer_task, return_exceptions=True)
                self._writer_task = None
        await self._close_connections()

    # -- writing -----------------------------------------------------------

    def append(self, event: Event) -> None:
        """Queue an event from any thread; never blocks."""
        self.submit(event)

    def submit(self, item: Write | Event) -> None:
        """Queue a write or an event from any thread; never blocks (from another thread,
        the loop is woken once for all that arrive before it takes them)."""
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

    async def write(self, sql: str, *params: Any) -> None:
        """Queue one statement and wait until it is committed (while the store is down, it
        is tried again at once: past the retry window it fails after that attempt)."""
        done = asyncio.get_running_loop().create_future()
        self.submit(Write(sql, params, done))
        if self.outage.down:
            self._retry_now.set()
        await done

    def wait_for_room(self, unblocked: threading.Event | None = None) -> str | None:
        """From an emitting thread: wait while the store cannot commit (see `StoreOutage`).
        On the loop's own thread, never waits (the writer runs there)."""
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
            except Fenced as exc:
                self._refuse_fenced(batch, str(exc))
                continue
            except Exception as exc:
                log.error("store_batch_failed", error=str(exc), size=len(batch))
                for item in batch:  # isolate the statement the database refuses; keep the rest
                    try:
                        await self._commit_patiently([item], take_queued=False)
                    except Fenced as fenced:
                        self._refuse_fenced([item], str(fenced))
                        continue
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
        """Commit `batch`; while the server cannot (down, unreachable, full, locked), hold
        and retry, reconnecting as needed. Nothing held is dropped; what is queued
        meanwhile joins the batch in order (unless `take_queued` is off). Past the retry
        window the writes a caller awaits are failed (and taken out), so requests get a
        503 while events wait. Raises only for a failure of a statement itself."""
        delay = 0.05
        self._held = batch
        try:
            while True:
                try:
                    await self._commit(batch)
                    break
                except Exception as exc:
                    if not storage_unavailable(exc):
                        raise
                    self.outage.begin(self._describe(exc))
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
        """Commit `batch` in one transaction on the writer connection (connecting again
        first if it was lost)."""
        if self._writer is None or self._writer.is_closed():
            self._writer = None
            try:
                self._writer = await self._connect_writer()
            except Exception as exc:  # (whatever the reason, nothing of the batch was tried)
                raise WriterUnreachable(self._describe(exc)) from exc
        if self.fenced is not None:
            raise Fenced(self.fenced)
        try:
            self._projected = await commit_batch(self._writer, batch, self.fence)
        except Exception as exc:
            if connection_broken(exc) or self._writer.is_closed():
                self._writer.terminate()
                self._writer = None
                if not storage_unavailable(exc):  # (e.g. asyncpg's "another operation is in
                    # progress" from a connection the server ended mid-batch): an outage too,
                    # never a refusal of the batch's statements
                    raise WriterUnreachable(self._describe(exc)) from exc
            raise

    # -- fencing (nodes) ---------------------------------------------------------------

    def _refuse_fenced(self, batch: list[Write | Event], why: str) -> None:
        """Nothing of `batch` is committed nor ever will be: its waiters fail, its events
        are dropped unpublished (nobody was told of them), and the node is told to stop."""
        first = self.fenced is None
        self.fenced = why
        self._finish(batch, StoreError(why))
        if first:
            log.error("store_fenced", reason=why, dropped=len(batch))
            self.on_fenced(why)

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
                    item.done.set_exception(store_error(error))
        if events and error is None:
            try:
                self.on_events_committed(events)
            except Exception:
                log.exception("event_fanout_failed")

    # -- reading -----------------------------------------------------------

    async def fetch_all(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Rows of a read on a pool connection; one that was lost (a server restart, a
        terminated backend) is tried once more on a fresh one before `StoreError`."""
        assert self._pool is not None, "store is not open"
        for attempt in (1, 2):
            try:
                rows = await self._pool.fetch(sql, *store_params(params))
                break
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                if attempt == 1 and connection_broken(exc) and not isinstance(exc, TimeoutError):
                    continue
                raise StoreError(f"read failed: {self._describe(exc)}") from exc
        return restore_rows([dict(row) for row in rows])

    def open_connections(self) -> int:
        """Connections to the server open now: the writer's and the read pool's (idle
        ones included: the pool keeps at most `pool_size`)."""
        writer = self._writer is not None and not self._writer.is_closed()
        return int(writer) + (self._pool.get_size() if self._pool is not None else 0)

    async def fetch_one(self, sql: str, *params: Any) -> dict[str, Any] | None:
        rows = await self.fetch_all(sql, *params)
        return rows[0] if rows else None

    def _describe(self, error: BaseException) -> str:
        """One line on a failure of the storage (never with the URL's password)."""
        return without_password(describe(error, self.where), self._url)

    async def task_status_counts(self) -> dict[str, int]:
        """Tasks by status, for `/metrics`."""
        rows = await self.fetch_all("SELECT status, count(*) AS n FROM tasks GROUP BY status")
        return {row["status"]: row["n"] for row in rows}
