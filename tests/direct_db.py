"""The test's database opened beside the store, as another process would, on either backend.

Some promises of the API can only be checked by reaching under it: a task made
"old" for retention by rewriting its timestamps, an idempotency key's row read
to see nothing is kept in clear, a row left disagreeing with its log. Those
tests use `direct_database(settings)`: statements in the one SQL both backends
take (SQLite's `?` placeholders, rewritten to `$1, $2, ...` for PostgreSQL),
run at once in autocommit, rows back as tuples. Blocking, callable from a
test's loop (PostgreSQL runs on a private loop thread of its own).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any

import asyncpg
from pg_server import SyncPg

from minidevin.runtime.settings import Settings


def dollar_placeholders(sql: str) -> str:
    """`?` placeholders as PostgreSQL's numbered ones (the statements here hold no `?` in
    their text)."""
    numbers = iter(range(1, 1 << 16))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)


class SqliteDirect:
    """The SQLite file of the data directory, on a connection of its own."""

    def __init__(self, settings: Settings) -> None:
        self._db = sqlite3.connect(settings.database_path, timeout=10, isolation_level=None)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._db.execute(sql, params).fetchall()]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._db:  # (one transaction)
            self._db.executemany(sql, rows)

    def dump(self) -> bytes:
        """Everything the database holds, as SQL text (blobs in hex, as SQLite dumps them)."""
        return "\n".join(self._db.iterdump()).encode()

    def close(self) -> None:
        self._db.close()


class PostgresDirect:
    """The PostgreSQL database of `settings.database_url`, on a connection of its own."""

    def __init__(self, settings: Settings) -> None:
        assert settings.database_url
        self._sync = SyncPg()
        self._conn: asyncpg.Connection = self._sync.connect(settings.database_url)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows = self._sync.run(self._conn.fetch(dollar_placeholders(sql), *params))
        return [tuple(row) for row in rows]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._sync.run(self._conn.executemany(dollar_placeholders(sql), list(rows)))

    def dump(self) -> bytes:
        """Every value of every table, one row a line (bytea as its raw bytes)."""
        tables = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        lines = []
        for (table,) in tables:
            for row in self.execute(f'SELECT * FROM "{table}"'):
                values = [v if isinstance(v, bytes) else str(v).encode() for v in row]
                lines.append(b"|".join([table.encode(), *values]))
        return b"\n".join(lines)

    def close(self) -> None:
        try:
            self._sync.run(self._conn.close())
        finally:
            self._sync.close()


Direct = SqliteDirect | PostgresDirect


@contextmanager
def direct_database(settings: Settings) -> Iterator[Direct]:
    """The store's database under `settings` (PostgreSQL when it names one, else SQLite),
    on a connection of the test's own, closed after."""
    direct = PostgresDirect(settings) if settings.database_url else SqliteDirect(settings)
    with closing(direct):
        yield direct
