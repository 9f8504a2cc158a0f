"""Coalescing a model turn's text deltas into fewer `token` events.

A provider streams many tiny deltas (a few characters each); each one logged
as its own event costs a commit row and one message per subscriber. The
`TokenCoalescer` joins consecutive deltas into one `token` event, within a
short window (`MINIDEVIN_TOKEN_COALESCE_MS`, at most 20 ms): the first delta
of a batch starts the window, and the batch is emitted when the window ends,
whether or not another delta arrives (a shared flusher thread does that, so a
stream that pauses mid-turn is never held back), or at once when it reaches
one piece's size (`streaming.split_delta`). The text is unchanged: the joined
events are exactly the deltas.

The owner calls `flush()` before any other event of the turn (a restart, the
turn's end, a failure) and on a stop, so tokens always come first in `seq`
order. Emitting happens under the coalescer's lock, so a flush by the flusher
thread and one by the model thread never interleave or reorder. (The flusher is
shared by all tasks: while the store holds every task's events back, it waits
with them, as the model threads do.)
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

import structlog

from minidevin.runtime.providers.streaming import TOKEN_PIECE_BYTES, split_delta

log = structlog.get_logger(__name__)
TextSink = Callable[[str], None]


class TokenCoalescer:
    """Joins text deltas arriving within `window` seconds; `window` 0 passes each through."""

    def __init__(self, emit: TextSink, window: float) -> None:
        self._emit = emit
        self.window = window
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._size = 0  # characters buffered (a char is at most 4 UTF-8 bytes)
        self._batch = 0  # which batch a scheduled flush is for

    def add(self, text: str) -> None:
        """Buffer one delta (or emit it now: no window, or the buffer is a piece's worth)."""
        if not text:
            return
        if self.window <= 0:
            self._send(text)
            return
        with self._lock:
            first = not self._parts
            self._parts.append(text)
            self._size += len(text)
            if self._size * 4 >= TOKEN_PIECE_BYTES:
                self._flush_locked()
                return
            if first:
                self._batch += 1
                _FLUSHER.schedule(time.monotonic() + self.window, self, self._batch)

    def flush(self) -> None:
        """Emit whatever is buffered, now."""
        with self._lock:
            self._flush_locked()

    def _flush_due(self, batch: int) -> None:
        """The flusher's call: emit the batch the timer was set for, if still buffered."""
        with self._lock:
            if batch == self._batch:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._parts:
            return
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        self._batch += 1  # a timer still set for the emitted batch does nothing
        self._send(text)

    def _send(self, text: str) -> None:
        for piece in split_delta(text):
            self._emit(piece)


IDLE_SECONDS = 1.0  # the flusher thread ends after this long with nothing due


class _Flusher:
    """One daemon thread for every coalescer: flushes each batch when its window ends."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, TokenCoalescer, int]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, when: float, coalescer: TokenCoalescer, batch: int) -> None:
        with self._cond:
            heapq.heappush(self._due, (when, next(self._order), coalescer, batch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="token-coalescer", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:  # (idle a while: it ends, and comes back on demand)
                    if not self._cond.wait(IDLE_SECONDS) and not self._due:
                        self._thread = None
                        return
                when = self._due[0][0]
                left = when - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                _, _, coalescer, batch = heapq.heappop(self._due)
            try:
                coalescer._flush_due(batch)
            except Exception:  # (the log's sink failing must not end the flusher)
                log.exception("token_flush_failed")


_FLUSHER = _Flusher()
