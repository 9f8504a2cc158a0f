"""What a PostgreSQL failure means to the store: an outage to wait out, or a refusal.

A failure of the server or the way to it (connection lost or refused, the
server shutting down or starting, out of disk or connections, a lock held past
the writer's `lock_timeout`, a read-only standby) is a storage outage: the
writer holds its batch and retries (`storage/outage.py`). A statement the
database refuses (a constraint, a bad value) fails alone. Messages name the
server by host, port and database only: the URL may hold a password, and no
message or log line of this package shows it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg

from minidevin.runtime.storage.interface import AlreadyExists, StoreError

# SQLSTATE classes and codes of a failure of the storage, not of a statement:
# 08 connection, 53 insufficient resources (disk full, out of memory, too many
# connections), 57 operator intervention (shutdown, starting up, cancelled), 58 system
# (I/O) errors, 55P03 lock not available, 25006 read-only transaction (a standby),
# 40001/40P01 serialization failure and deadlock (worth trying again)
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_UNAVAILABLE_CODES = frozenset({"55P03", "25006", "40001", "40P01"})
# ones worth waiting out at open (a server starting, busy, or not reachable yet)
_OPEN_TRANSIENT = ("08", "53", "57P03")


class WriterUnreachable(OSError):
    """The writer could not connect again (server down, credentials or database gone):
    an outage, never a refusal of the batch's statements."""


def target(url: str) -> str:
    """host:port/database of a PostgreSQL URL: what messages name (never the password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the configured PostgreSQL server"
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres"
    return f"{host}:{port}/{database}"


def without_password(text: str, url: str) -> str:
    """`text` with the URL's password (if any, plain or %-encoded) masked: a driver's
    message could quote what it was given."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "***")
    return text


def _sqlstate(error: BaseException) -> str:
    return str(getattr(error, "sqlstate", "") or "")


def storage_unavailable(error: BaseException) -> bool:
    """True for a failure of the server or the connection to it (worth holding writes for)."""
    if isinstance(error, (OSError, TimeoutError)):
        return True
    if isinstance(error, asyncpg.InterfaceError):  # (not a bad argument: a closed connection)
        return "closed" in str(error)
    code = _sqlstate(error)
    return code in _UNAVAILABLE_CODES or code[:2] in _UNAVAILABLE_CLASSES


def connection_broken(error: BaseException) -> bool:
    """The connection that raised `error` cannot be used again (reconnect)."""
    if isinstance(error, asyncpg.InterfaceError):
        return "closed" in str(error)
    return isinstance(error, (OSError, asyncpg.PostgresConnectionError, TimeoutError)) or _sqlstate(
        error
    )[:2] in ("08", "57")


def describe(error: BaseException, where: str) -> str:
    """One line on a failure of the storage, in the words the SQLite store uses for its own
    (a held lock says "locked", no room "full")."""
    code = _sqlstate(error)
    text = str(error) or type(error).__name__
    if code == "55P03":
        return f"database is locked (another session holds a lock on {where}): {text}"
    if code == "53100":
        return f"database or disk is full ({where}): {text}"
    if code == "25006":
        return f"database is read-only ({where}): {text}"
    if code[:2] == "53":
        return f"database server {where} is out of resources: {text}"
    if isinstance(error, WriterUnreachable):  # (described when it was raised)
        return text
    if isinstance(error, (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)) or (
        code[:2] in ("08", "57")
    ):
        return f"cannot reach the database server {where}: {text}"
    if isinstance(error, TimeoutError):
        return f"the database server {where} did not answer in time"
    return f"{where}: {text}"


def store_error(error: Exception) -> StoreError:
    """A write the database refused, as the interface's error (`AlreadyExists` for a
    duplicate unique value)."""
    if isinstance(error, StoreError):
        return error
    if isinstance(error, asyncpg.UniqueViolationError):
        return AlreadyExists(f"write failed: UNIQUE constraint failed: {error}")
    return StoreError(f"write failed: {error}")


def open_transient(error: BaseException) -> bool:
    """A failure worth waiting out at open: the server is starting, busy or not up yet."""
    if isinstance(error, (OSError, TimeoutError)):
        return True
    code = _sqlstate(error)
    return any(code.startswith(prefix) for prefix in _OPEN_TRANSIENT) or code == "55P03"


def open_problem(where: str, error: BaseException, waited: float) -> str:
    """One line on why the database at `where` cannot be opened, and what to do."""
    code = _sqlstate(error)
    text = str(error) or type(error).__name__
    if isinstance(error, (OSError, TimeoutError)) or code[:2] in ("08", "57"):
        return (
            f"cannot reach the PostgreSQL server {where} (waited {waited:.1f} s): {text}; "
            "start it, or fix MINIDEVIN_DATABASE_URL"
        )
    if code[:2] == "28":
        return (
            f"the PostgreSQL server {where} refused the credentials: {text}; "
            "fix the user or password in MINIDEVIN_DATABASE_URL"
        )
    if code == "3D000":
        return f"the PostgreSQL database {where} does not exist: create it, then start again"
    if code == "55P03":
        return (
            f"the PostgreSQL database {where} is locked by another session (waited "
            f"{waited:.1f} s); stop what holds it, then start again"
        )
    if code == "25006":
        return (
            f"the PostgreSQL database {where} is read-only (a standby?): "
            "point MINIDEVIN_DATABASE_URL at the primary"
        )
    return f"cannot open the PostgreSQL database {where}: {text}"


class ReadOnlyServer(Exception):
    """The server accepts no writes (a standby): SQLSTATE 25006 for `open_problem`."""

    sqlstate = "25006"
