"""Each storage backend the store tests run against, with its own fault injections.

The store tests talk to a backend only through the storage interface
(`minidevin.runtime.storage.Store`); what cannot be done through it (hold the
database's write lock as another process would, fill the disk, look at what
is committed from another connection, plant a newer schema) is the backend's
harness, here. A second backend is one more class in `BACKENDS`.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pg_server import ThrowawayPostgres

from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import Store, open_store
from minidevin.runtime.storage.postgres_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from minidevin.runtime.storage.sqlite import SqliteStore
from minidevin.runtime.storage.sqlite_schema import SCHEMA_VERSION


class SqliteBackend:
    """The SQLite store on a file of the test's own data directory."""

    name = "sqlite"
    locked_words = "locked"  # in the 503 of a write the held lock refused
    full_words = "full"  # in the 503 of a write that found no room

    def __init__(self, base: Path) -> None:
        self.data_dir = base.with_name(base.name + "-data")

    def settings(self, **fields: Any) -> Settings:
        return Settings(data_dir=self.data_dir, **fields)

    def store(self) -> Store:
        return open_store(self.settings())

    def committed_events(self) -> int:
        """The events another connection sees committed (callable from any thread)."""
        with sqlite3.connect(self.settings().database_path) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(count)

    def plant_newer_schema(self) -> None:
        """The database as a newer minidevin left it."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with sqlite3.connect(self.settings().database_path) as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    @contextmanager
    def write_lock_held(self) -> Iterator[None]:
        """Another process holds the database's write lock meanwhile."""
        other = sqlite3.connect(self.settings().database_path, isolation_level=None, timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    async def fill_up(self, store: Store) -> None:
        """No room for more: SQLite's own size cap makes the disk "full" (SQLITE_FULL)."""
        writer = self._writer(store)  # (the cap is the writing connection's own)
        (pages,) = await (await writer.execute("PRAGMA page_count")).fetchone()  # type: ignore[misc]
        await writer.execute(f"PRAGMA max_page_count = {pages}")

    async def make_room(self, store: Store) -> None:
        await self._writer(store).execute("PRAGMA max_page_count = 1073741823")

    @staticmethod
    def _writer(store: Store) -> Any:
        assert isinstance(store, SqliteStore) and store._writer is not None
        return store._writer


# the tables a held "write lock" covers, and that "fill up" refuses rows of
_TABLES = (
    "users", "api_keys", "revoked_tokens", "sessions", "tasks", "events", "artifacts",
    "workspace_claims", "idempotency_keys", "secrets", "webhook_deliveries",
)  # fmt: skip
# what PostgreSQL says when it cannot extend a table's file on a full disk (SQLSTATE 53100)
_DISK_FULL = """
CREATE OR REPLACE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file: No space left on device'
        USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
END $$
"""


class PostgresBackend:
    """The PostgreSQL store on a database of its own in the run's throwaway server."""

    name = "postgres"
    locked_words = "locked"
    full_words = "full"

    def __init__(self, base: Path, server: ThrowawayPostgres) -> None:
        self.data_dir = base.with_name(base.name + "-data")
        self.server = server
        self.database = "t_" + uuid.uuid4().hex
        self.url = server.create_database(self.database)

    def settings(self, **fields: Any) -> Settings:
        return Settings(data_dir=self.data_dir, database_url=self.url, **fields)

    def store(self) -> Store:
        return open_store(self.settings())

    def committed_events(self) -> int:
        """The events another connection sees committed (callable from any thread)."""
        (row,) = self.server.sync.execute(self.url, "SELECT count(*) AS n FROM events")
        return int(row["n"])

    def plant_newer_schema(self) -> None:
        """The database as a newer minidevin left it."""
        self.server.sync.execute(
            self.url,
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            f"INSERT INTO schema_version (version) VALUES ({PG_SCHEMA_VERSION + 1})",
        )

    @contextmanager
    def write_lock_held(self) -> Iterator[None]:
        """Another session holds every table in EXCLUSIVE mode meanwhile: writes wait (the
        store's writer gives up each try at its lock timeout), reads go on."""
        sync = self.server.sync
        other = sync.connect(self.url)
        try:
            sync.run(other.execute(f"BEGIN; LOCK TABLE {', '.join(_TABLES)} IN EXCLUSIVE MODE"))
            yield
        finally:
            sync.run(other.execute("ROLLBACK"))
            sync.run(other.close())

    async def fill_up(self, store: Store) -> None:
        """No room for more: every insert or update fails as on a full disk (SQLSTATE
        53100, what the server raises when it cannot extend a file)."""
        triggers = [
            f"CREATE TRIGGER test_disk_full BEFORE INSERT OR UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_disk_full()"
            for table in _TABLES
        ]
        self.server.sync.execute(self.url, _DISK_FULL, *triggers)

    async def make_room(self, store: Store) -> None:
        drops = [f"DROP TRIGGER IF EXISTS test_disk_full ON {table}" for table in _TABLES]
        self.server.sync.execute(self.url, *drops)

    def drop(self) -> None:
        """Drop the test's database (whoever is still connected)."""
        self.server.sync.execute(
            self.server.url(), f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
        )


BACKENDS: list[type[SqliteBackend] | type[PostgresBackend]] = [SqliteBackend, PostgresBackend]
Backend = SqliteBackend | PostgresBackend


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each storage backend in turn, on this test's own data directory (and, for
    PostgreSQL, its own database in the run's server: skipped where none is installed)."""
    if request.param is PostgresBackend:
        harness = PostgresBackend(tmp_path, request.getfixturevalue("postgres_server"))
        try:
            yield harness
        finally:
            harness.drop()
        return
    yield request.param(tmp_path)
