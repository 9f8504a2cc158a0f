"""Files made durable in groups: the files of every task that ends meanwhile, synced together.

A task's artifact files must be on disk before its final status is committed (a
client told "completed" can download them after a crash). Each task syncing its
own files on its own made every `fsync` a journal commit of its own: 1,000 tasks
ending at once spent about 5 s of their 10 s in them. `GroupSync.wait(directory,
files)` is a group commit instead: the first caller syncs the files of every caller
so far (and their directories, so the renames that put them there last too) while
later callers queue; a caller returns once a sync that *began after its call* has
finished, so its files are covered, and the callers that queued during a sync share
the next one. On ext4 the first `fsync` of a group commits the journal transaction
that holds the others' metadata as well, so the rest are cheap. (A `syncfs` of the
whole filesystem was slower here: it also flushes everything else the server
writes, git stores and the database among them.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path


class GroupSync:
    def __init__(self, fsync: Callable[[int], None] = os.fsync) -> None:
        self._fsync = fsync
        self._lock = threading.Condition()
        self._asked = 0  # tickets handed out
        self._done = 0  # every ticket up to this one is durable (or failed)
        self._failed: dict[int, OSError] = {}  # ticket -> why its files are not durable
        self._files: list[tuple[int, Path]] = []  # what the next sync covers, and whose
        self._directories: dict[Path, list[int]] = {}
        self._syncing = False
        self.syncs = 0  # how many group syncs ran (for the benchmarks and tests)

    def wait(self, directory: Path, files: Sequence[Path] = ()) -> None:
        """Return once `files` (in `directory`) are durable, with their names there;
        `OSError` if one of them (or the directory) could not be synced."""
        with self._lock:
            self._asked += 1
            ticket = self._asked
            self._files.extend((ticket, path) for path in files)
            self._directories.setdefault(directory, []).append(ticket)
            while self._done < ticket:
                if not self._syncing:
                    self._sync_once()
                else:
                    self._lock.wait()
            error = self._failed.pop(ticket, None)
        if error is not None:
            raise error

    def _sync_once(self) -> None:
        """With the lock held: one sync of every caller's files so far (a caller asking later
        waits for the next one, run by whoever of them wakes first). A file that cannot be
        synced fails its own caller only; the others' files are synced all the same."""
        self._syncing = True
        covered = self._asked
        files, self._files = self._files, []
        directories, self._directories = self._directories, {}
        self._lock.release()
        failed: dict[int, OSError] = {}
        try:
            for path, tickets in [*((p, [t]) for t, p in files), *directories.items()]:
                try:
                    flags = os.O_RDONLY | (os.O_DIRECTORY if path in directories else 0)
                    fd = os.open(path, flags)
                    try:
                        self._fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    for ticket in tickets:
                        failed.setdefault(ticket, exc)
        except BaseException as exc:  # (not an OS error: nobody of this group is covered)
            error = OSError(f"the sync failed: {exc!r}")
            for ticket in range(self._done + 1, covered + 1):
                failed.setdefault(ticket, error)
            raise
        finally:
            self._lock.acquire()
            self.syncs += 1
            self._failed.update(failed)  # (each caller takes its own away)
            self._done = covered
            self._syncing = False
            self._lock.notify_all()


ARTIFACTS = GroupSync()  # the process's artifact files
