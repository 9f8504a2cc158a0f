"""Each storage backend the store tests run against, with its own fault injections.

The store tests talk to a backend only through the storage interface
(`minidevin.runtime.storage.Store`); what cannot be done through it (hold the
database's write lock as another process would, fill the disk, look at what
is committed from another connection, plant a newer schema) is the backend's
harness, here. A second backend is one more class in `BACKENDS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import Store, open_store
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


BACKENDS = [SqliteBackend]
Backend = SqliteBackend  # (the union of the harness classes once there are more)


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each storage backend in turn, on this test's own data directory."""
    return request.param(tmp_path)
