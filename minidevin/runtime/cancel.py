"""A cancel token shared by a task and the children doing its work."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable


class Cancelled(Exception):
    """Raised inside work that noticed its cancel token was set."""


class CancelToken:
    """Set once; work polls `is_set` or registers a callback that runs on cancel.

    Callbacks run on the thread that calls `cancel()` (or at once, if the token
    is already set when they are added), so they must be quick and thread-safe:
    closing a stream, killing a process group.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            with contextlib.suppress(Exception):  # one failure must not stop the others
                callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register `callback`; returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        callback()
        return lambda: None

    def _discard(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
