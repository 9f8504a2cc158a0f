"""One owner of a data directory: an OS file lock held for a runtime's whole life.

A second `Runtime` on a data directory that another one holds (in another process
or in this one) must not start: its start-up would fail the holder's live tasks
and delete their snapshots. `DataDirLock.acquire` takes an exclusive `flock` on
`<data_dir>/minidevin.lock` before anything in the directory is read or changed,
and writes the holder's pid into the file so a refusal can name it.

`flock` belongs to the open file description: the kernel drops it when the last
descriptor closes, so on a clean exit, on a crash and on `kill -9` alike, and a
second open of the file in the same process conflicts too. The descriptor is
close-on-exec, so no command the agent runs inherits it (an escaped child
outliving a killed server does not keep the directory locked). Like every
`flock`, it is only as good as the file system's support for it: keep the data
directory on a local disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "minidevin.lock"
PID_READ_ATTEMPTS = 20  # the holder writes its pid right after locking: wait out that gap
PID_READ_PAUSE = 0.01


class DataDirInUse(RuntimeError):
    """Another runtime holds the data directory; `pid` is its process id, if known."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        if pid is None:
            holder = "another minidevin process"
        elif pid == os.getpid():
            holder = f"another runtime in this process (pid {pid})"
        else:
            holder = f"another minidevin process (pid {pid})"
        super().__init__(
            f"data directory {data_dir} is in use by {holder}; "
            "stop it or choose another data directory"
        )


class DataDirLock:
    """The exclusive lock on one data directory (acquire once, release once)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Create the data directory (0700) if needed and lock it, or raise `DataDirInUse`."""
        if self._fd is not None:
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(self.data_dir, self._holder_pid()) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # (drops the lock)
            raise
        self._fd = fd

    def release(self) -> None:
        """Forget the pid and drop the lock; nothing happens if this object does not hold it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # while still locked: never erases a later holder's pid
        os.close(fd)

    def _holder_pid(self) -> int | None:
        """The pid in the lock file: empty or a dead process's means the holder is between
        locking and writing (a crashed holder's pid stays until the next one writes)."""
        seen: int | None = None
        for attempt in range(PID_READ_ATTEMPTS):
            seen = _read_pid(self.path)
            if seen is not None and _alive(seen):
                return seen
            if attempt < PID_READ_ATTEMPTS - 1:
                time.sleep(PID_READ_PAUSE)
        return seen  # (maybe a process in another pid namespace)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
