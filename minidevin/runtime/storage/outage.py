"""A store that cannot commit: the writer holds what it was given and tasks wait.

The writer (on the loop) calls `begin` when a commit fails because the
database is locked, full, read-only or failing, and `end` once a commit goes
through again. Meanwhile nothing queued is dropped: events and the writes
queued with them are held, in order, and retried. Emitting threads (a task's
actor, its model stream) call `wait_for_room` before each event: while the
store is down they wait, which is the task's backpressure (its model stream
is not read, its next tool does not start). After `window` seconds they get
the reason to give up (the task stops with `STORE_UNAVAILABLE`), writes a
request awaits fail at once (503), and `on_expired` tells the live
subscribers; `on_recovered` runs when commits go through again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# SQLite's primary result codes for a failure of the storage, not of a statement:
# BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN
UNAVAILABLE_CODES = frozenset({5, 6, 8, 10, 13, 14})


def storage_unavailable(error: BaseException) -> bool:
    """True for a failure of the storage itself (worth holding writes for), not of a statement."""
    if isinstance(error, OSError):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in UNAVAILABLE_CODES


class StoreOutage:
    """Whether the store commits; thread-safe (the writer sets it, emitting threads read it)."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._up = threading.Event()
        self._up.set()
        self._since: float | None = None
        self._error = ""
        self._expired = False
        self.on_expired: Callable[[str], None] = lambda detail: None
        self.on_recovered: Callable[[], None] = lambda: None

    @property
    def down(self) -> bool:
        return not self._up.is_set()

    def begin(self, error: str) -> None:
        """A commit failed for the storage's sake (called again on each failed retry)."""
        self._error = error
        if self._since is None:
            self._since = self._clock()
            self._up.clear()
            log.warning("store_unavailable", error=error)
        if not self._expired and self.expired():
            self._expired = True
            log.error("store_unavailable_too_long", seconds=self.window, error=error)
            try:
                self.on_expired(self.detail())
            except Exception:
                log.exception("store_outage_notice_failed")

    def end(self, held_events: int, held_writes: int) -> None:
        """Commits go through again: release everyone waiting."""
        if self._since is None:
            return
        seconds = self._clock() - self._since
        self._up.set()  # (before `_since` goes: a waiter sees "up", never "down for 0 s")
        self._since, self._expired = None, False
        log.warning(
            "store_recovered",
            seconds=round(seconds, 3),
            held_events=held_events,
            held_writes=held_writes,
        )
        try:
            self.on_recovered()
        except Exception:
            log.exception("store_outage_notice_failed")

    def expired(self) -> bool:
        """Down for longer than the window: tasks give up and awaited writes fail at once."""
        since = self._since
        return since is not None and self._clock() - since >= self.window

    def detail(self) -> str:
        since = self._since
        seconds = 0.0 if since is None else self._clock() - since
        return f"the database could not be written for {seconds:.0f} s: {self._error}"

    def wait_for_room(self, unblocked: threading.Event | None = None) -> str | None:
        """From an emitting thread: wait while the store is down, up to the window.

        None once it commits again (at once when it is up), or once `unblocked`
        is set (the task is stopping: its last events are held, never refused);
        past the window, the reason the caller must give up.
        """
        while not self._up.is_set():
            if unblocked is not None and unblocked.is_set():
                return None
            since = self._since
            if since is None:  # (a new `begin` sets it before the store is down)
                self._up.wait(0.01)
                continue
            remaining = since + self.window - self._clock()
            if remaining <= 0:
                return self.detail()
            # (in steps, to notice `unblocked`: only while the store is down)
            self._up.wait(min(remaining, 0.05 if unblocked is not None else remaining))
        return None
