"""Files made durable in groups: one `syncfs` for every task that ends meanwhile.

A task's artifact files must be on disk before its final status is committed (a
client told "completed" can download them after a crash). One `fsync` per file
costs a journal commit each: 1,000 tasks ending at once spent about 5 s of their
10 s in them. `GroupSync.wait(directory)` is a group commit instead: the first
caller runs `syncfs` on the directory's filesystem while later callers queue; a
caller returns once a sync that *began after its call* has finished, so each one
is covered, and the callers that queued during a sync share the next one.

Where `syncfs` is missing (not Linux), `wait` falls back to an `fsync` of each
file given.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path


def _libc_syncfs() -> Callable[[int], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None

    def call(fd: int) -> None:
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return call


class GroupSync:
    def __init__(self, syncfs: Callable[[int], None] | None = None) -> None:
        self._syncfs = syncfs if syncfs is not None else _libc_syncfs()
        self._lock = threading.Condition()
        self._asked = 0  # tickets handed out
        self._done = 0  # every ticket up to this one is durable
        self._failed: dict[tuple[int, int], OSError] = {}  # tickets (first, last) -> error
        self._syncing = False
        self.syncs = 0  # how many syncs ran (for the benchmarks and tests)

    def wait(self, directory: Path, files: Sequence[Path] = ()) -> None:
        """Return once everything written under `directory`'s filesystem before this call is
        durable; `OSError` if the sync that covered it failed."""
        if self._syncfs is None:
            for path in files:
                _fsync_path(path)
            return
        with self._lock:
            self._asked += 1
            ticket = self._asked
            while self._done < ticket:
                if not self._syncing:
                    self._sync_once(directory)
                else:
                    self._lock.wait()
            error = next((e for (a, b), e in self._failed.items() if a <= ticket <= b), None)
        if error is not None:
            raise error

    def _sync_once(self, directory: Path) -> None:
        """With the lock held: one sync covering every ticket asked so far (a caller asking
        later waits for the next one, run by whoever of them wakes first)."""
        self._syncing = True
        first, covered = self._done + 1, self._asked
        self._lock.release()
        error: OSError | None = None
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                assert self._syncfs is not None
                self._syncfs(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            error = exc
        finally:
            self._lock.acquire()
            self.syncs += 1
            if error is not None:
                self._failed[(first, covered)] = error
                if len(self._failed) > 64:  # (old failures: their callers have read them)
                    self._failed = dict(list(self._failed.items())[-64:])
            self._done = covered
            self._syncing = False
            self._lock.notify_all()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ARTIFACTS = GroupSync()  # the process's artifact files (one data directory, one filesystem)
