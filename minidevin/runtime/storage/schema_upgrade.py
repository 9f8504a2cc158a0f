"""Bringing a store's schema up to date offline (`minidevin db migrate`), and connecting
to PostgreSQL for the offline commands with the store's own one-line refusals.

The stores migrate themselves when they open (`SqliteStore`, `PostgresStore`);
this runs the same migrations without starting anything else, and says which
version the database was at and is at now. Messages name a PostgreSQL server by
host, port and database only: the URL's password is never in them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from minidevin.runtime.storage.interface import StoreError
from minidevin.runtime.storage.open_errors import open_problem as sqlite_open_problem
from minidevin.runtime.storage.postgres_errors import (
    describe,
    open_problem,
    target,
    without_password,
)
from minidevin.runtime.storage.postgres_schema import migrate, schema_version

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 120.0  # (a migration; a copy's COPY of a big event log has none)
URL_SETTING = "MINIDEVIN_DATABASE_URL"


@dataclass(frozen=True)
class SchemaUpgrade:
    """What `db migrate` did: the database (a file, or host:port/database) and its
    schema version before and after."""

    where: str
    before: int
    after: int

    def summary(self) -> str:
        done = "already current" if self.before == self.after else f"was {self.before}"
        return f"{self.where}: schema version {self.after} ({done})"


def sqlite_version(path: Path) -> int:
    """The SQLite database's schema version (`PRAGMA user_version`; 0: no file yet)."""
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(path)) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise StoreError(sqlite_open_problem(path, exc, 0.0)) from None


async def upgrade_sqlite(path: Path, *, retry_seconds: float = 10.0) -> SchemaUpgrade:
    """Migrate the SQLite database at `path` (created if absent) as the store does when it
    opens; the caller holds its data directory's lock. `StoreError` when it cannot be."""
    from minidevin.runtime.storage.sqlite import SqliteStore

    before = sqlite_version(path)
    store = SqliteStore(path, retry_seconds=retry_seconds)
    await store.open()  # (migrates; a newer schema, a lock, a corrupt file: StoreError)
    await store.close()
    return SchemaUpgrade(str(path), before, sqlite_version(path))


async def connect_postgres(
    url: str, url_name: str = URL_SETTING, command_timeout: float | None = COMMAND_TIMEOUT
) -> asyncpg.Connection:
    """A connection to the PostgreSQL database at `url` that accepts writes, or
    `StoreError` in one line (unreachable, refused credentials, no such database, a
    standby); `url_name` is what the messages tell the user to fix."""
    where = target(url)
    try:
        conn = await asyncpg.connect(
            url,
            timeout=CONNECT_TIMEOUT,
            command_timeout=command_timeout,
            server_settings={"application_name": "minidevin"},
        )
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        problem = open_problem(where, exc, 0.0).replace(URL_SETTING, url_name)
        raise StoreError(without_password(problem, url)) from None
    except (asyncpg.InterfaceError, ValueError) as exc:  # (a URL asyncpg cannot use)
        problem = f"{url_name} ({where}) cannot be used: {exc}"
        raise StoreError(without_password(problem, url)) from None
    try:
        if await conn.fetchval("SHOW transaction_read_only") == "on":
            raise StoreError(
                f"the PostgreSQL database {where} is read-only (a standby?): "
                f"point {url_name} at the primary"
            )
    except BaseException:
        conn.terminate()
        raise
    return conn


def postgres_failure(error: BaseException, url: str) -> StoreError:
    """A failure while working on the database at `url`, as one line without its password."""
    if isinstance(error, StoreError):
        return StoreError(without_password(str(error), url))
    return StoreError(without_password(describe(error, target(url)), url))


async def upgrade_postgres(url: str) -> SchemaUpgrade:
    """Migrate the PostgreSQL database at `url` as the store does when it opens (under
    the migrations' advisory lock). `StoreError` when it cannot be (unreachable, newer)."""
    where = target(url)
    conn = await connect_postgres(url)
    try:
        before = await schema_version(conn)
        await migrate(conn, where)
        after = await schema_version(conn)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise postgres_failure(exc, url) from None
    finally:
        await close_quietly(conn)
    return SchemaUpgrade(where, before, after)


async def close_quietly(conn: asyncpg.Connection) -> None:
    """Close `conn` (at once, if the server does not answer)."""
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:
        conn.terminate()
