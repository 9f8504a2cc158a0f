"""Why a store cannot be opened, in one line a person can act on.

A server that cannot open its store must end at once with the reason (a supervisor
restarts it, an operator reads why), never hang half-started or serve errors.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from minidevin.runtime.storage.interface import StoreError

# a database locked at start is waited out this long at most (the store's retry time
# when shorter): past it the start fails, and a supervisor can see why and retry
OPEN_TIMEOUT_MAX = 20.0
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def data_dir_error(data_dir: Path, error: OSError) -> StoreError:
    """The data directory (or a file in it) cannot be locked, created or made private."""
    where = error.filename or data_dir
    reason = (error.strerror or str(error)).lower()
    if error.errno in _NOT_WRITABLE:
        reason += " (the data directory must be writable)"
    return StoreError(f"cannot use the data directory {data_dir}: {where}: {reason}")


def open_problem(path: Path, error: BaseException, waited: float) -> str:
    """One line on why the database at `path` cannot be opened, and what to do."""
    if isinstance(error, OSError):
        reason = (error.strerror or str(error)).lower()
        if error.errno in _NOT_WRITABLE:
            reason += " (the database and its data directory must be writable)"
        return f"cannot open the database {error.filename or path}: {reason}"
    text = str(error)
    if "locked" in text or "busy" in text:
        return (
            f"the database {path} is locked by another process (waited {waited:.1f} s); "
            "stop the process that holds it, then start again"
        )
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return (
            f"cannot open the database {path}: {text} "
            "(the database and its data directory must be writable)"
        )
    if isinstance(error, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    ):
        return (
            f"the database {path} is corrupt ({text}); "
            "restore it from a backup, or move it away to start with an empty one"
        )
    return f"cannot open the database {path}: {text}"
