"""A new session's snapshot store, made in the background before its first task needs it.

A working directory's first snapshot is its dearest (`snapshots.py`: a plain
directory hashes every file; a repository's index is parsed and its trees are
packed). A session is usually created some time before its first task, so the
runtime takes that snapshot then, on one thread of its own, one directory at a
time; a task that starts meanwhile waits on the store's lock and finds the work
done or half done, never done twice.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

import structlog

from minidevin.runtime.snapshots import snapshots_for

log = structlog.get_logger(__name__)
QUEUE_LIMIT = 32
IDLE_SECONDS = 0.2  # the thread ends after this long with nothing to do
Job = tuple[Path, tuple[int, int] | None, tuple[int, int] | None]


class SnapshotWarmer:
    """Takes the first snapshot of new sessions' working directories, in order."""

    def __init__(self, snapshots_dir: Path) -> None:
        self.snapshots_dir = snapshots_dir
        self._jobs: queue.Queue[Job | None] = queue.Queue(QUEUE_LIMIT)
        self._thread: threading.Thread | None = None  # (started by a warm-up, ends when idle)
        self._lock = threading.Lock()

    def warm(
        self,
        working_directory: Path,
        identity: tuple[int, int] | None,
        run_as: tuple[int, int] | None,
    ) -> None:
        """Queue the directory's snapshot (never blocks; dropped when the queue is full)."""
        with contextlib.suppress(queue.Full):
            self._jobs.put_nowait((working_directory, identity, run_as))
        with self._lock:  # (the thread ends once idle: none stays behind between bursts)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="snapshot-warmer", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Take no more; wait (up to `timeout`) for the one under way."""
        while True:  # (what waits is dropped: only the one under way is waited for)
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if job is None:
                return
            working_directory, identity, run_as = job
            snapshots = snapshots_for(self.snapshots_dir, working_directory, identity, run_as)
            if (snapshots.git_dir / "HEAD").exists():
                continue  # (a task made it first)
            try:
                snapshots.take()
            except Exception as exc:  # (the task's own snapshot will say what is wrong)
                log.info("snapshot_warm_failed", error=str(exc)[:300])
