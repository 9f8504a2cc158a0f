"""Copying an embedded installation's SQLite database into PostgreSQL (`minidevin db copy`).

Every table of the SQLite file goes into the PostgreSQL database by binary
COPY, each after the tables its foreign keys name, in one transaction that
first brings the target's schema up to date and locks its tables against
writers. A target that already holds rows is refused, and a copy that fails
leaves the target as it was (its migration included). Values go as SQLite
gives them, into the columns `postgres_schema.py` made for them (text as text,
JSON as its text, Unix times as doubles, blobs as bytea), so `PostgresStore`
reads back what `SqliteStore` read. The rowids of the tables that page in
insertion order are kept, and their identity sequences go on after them (page
cursors a client holds stay valid). A table or column the two schemas do not
share stops the copy before anything is written.

Each artifact's file (`artifacts/<id>` in the SQLite file's data directory) is
copied into `artifact_contents` in the same transaction, so every node of the
PostgreSQL installation serves it; a file that is missing or unreadable, a symbolic
link, not a regular file, or not the size its row says (and a row whose id is not an
artifact id) is named in the report and left out (its row is copied: the node with the file still
serves it, others answer 404). The secrets key and the JWT secret stay in the
data directory, which the PostgreSQL-backed server must keep using (or be given
as settings). The caller holds that directory's lock, so no server writes the
source meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from minidevin.runtime.storage.interface import StoreError
from minidevin.runtime.storage.open_errors import open_problem as sqlite_open_problem
from minidevin.runtime.storage.postgres_errors import target
from minidevin.runtime.storage.postgres_schema import migrate, schema_version
from minidevin.runtime.storage.postgres_text import store_text
from minidevin.runtime.storage.schema_upgrade import (
    close_quietly,
    connect_postgres,
    postgres_failure,
)
from minidevin.runtime.storage.sqlite_schema import SCHEMA_VERSION as SQLITE_VERSION

# an artifact's id, as `storage.new_id` makes them (its file's name in the artifacts directory)
_ARTIFACT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LOCK_WAIT = "5s"  # for the target's table locks (a server using it holds them)
# what a value of each PostgreSQL column type must be in Python (for the message naming
# the first value a table's COPY refused)
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "bigint": (int,),
    "integer": (int,),
    "double precision": (float, int),
    "bytea": (bytes,),
}


@dataclass
class CopyReport:
    """What a copy did: the SQLite file, the target (host:port/database), the target's
    schema version, the rows copied per table (in copy order), and how long it took."""

    source: Path
    where: str
    schema_version: int
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # artifacts whose file could not be copied: "<id> (<why>)"
    missing_artifacts: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True)
class _Table:
    """One table to copy: its columns as COPY fills them, their PostgreSQL types, and the
    positions of the SQLite primary key's columns (to name a refused row)."""

    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    key: tuple[int, ...]

    @property
    def keeps_rowid(self) -> bool:
        return self.columns[0] == "rowid"

    def select(self) -> str:
        order = " ORDER BY rowid" if self.keeps_rowid else ""
        return f"SELECT {', '.join(map(_quote, self.columns))} FROM {_quote(self.name)}{order}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_tables(source: sqlite3.Connection) -> list[str]:
    """The SQLite database's tables, each after the tables its foreign keys name."""
    names = [
        row[0]
        for row in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        )
    ]
    parents = {
        name: {row[2] for row in source.execute(f"PRAGMA foreign_key_list({_quote(name)})")}
        & set(names) - {name}
        for name in names
    }
    ordered: list[str] = []
    while parents:
        ready = sorted(name for name, needs in parents.items() if needs <= set(ordered))
        if not ready:
            raise StoreError(f"the tables {sorted(parents)} name each other: cannot order them")
        ordered += ready
        for name in ready:
            del parents[name]
    return ordered


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite database at `path`, read only, at this minidevin's schema version."""
    try:
        source = sqlite3.connect(path, isolation_level=None)
        (version,) = source.execute("PRAGMA user_version").fetchone()
        source.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StoreError(sqlite_open_problem(path, exc, 0.0)) from None
    if version != SQLITE_VERSION:
        source.close()
        relation = "newer than this minidevin understands" if version > SQLITE_VERSION else "older"
        raise StoreError(
            f"{path} has schema version {version}, {relation} (this minidevin copies version "
            f"{SQLITE_VERSION}; `minidevin db migrate` brings an older one up to date)"
        )
    return source


async def _plan(source: sqlite3.Connection, path: Path, conn: asyncpg.Connection) -> list[_Table]:
    """The tables to copy, each checked against the target's schema (same columns)."""
    tables = []
    for name in source_tables(source):
        info = list(source.execute(f"PRAGMA table_info({_quote(name)})"))
        sqlite_columns = [row[1] for row in info]
        pg_types = {
            row["column_name"]: row["data_type"]
            for row in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = $1",
                name,
            )
        }
        if not pg_types:
            raise StoreError(
                f"the table {name} of {path} has no counterpart in the PostgreSQL schema: "
                "this minidevin cannot copy it"
            )
        rowid = ["rowid"] if "rowid" in pg_types and "rowid" not in sqlite_columns else []
        columns = (*rowid, *sqlite_columns)
        if set(columns) != set(pg_types):
            raise StoreError(
                f"the table {name} has other columns in {path} than in PostgreSQL (only in "
                f"SQLite: {sorted(set(columns) - set(pg_types))}, only in PostgreSQL: "
                f"{sorted(set(pg_types) - set(columns))}): this minidevin cannot copy it"
            )
        key = tuple(len(rowid) + row[0] for row in sorted(info, key=lambda row: row[5]) if row[5])
        types = tuple(pg_types[column] for column in columns)
        tables.append(_Table(name, columns, types, key or (0,)))
    return tables


async def _lock_empty_target(conn: asyncpg.Connection, where: str) -> list[str]:
    """Lock the target's tables against writers (for the transaction); refuse a target
    that holds any row. The tables' names."""
    names = [
        row["tablename"]
        for row in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename <> 'schema_version' ORDER BY tablename"
        )
    ]
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
    await conn.execute(f"LOCK TABLE {', '.join(map(_quote, names))} IN EXCLUSIVE MODE")
    holding = [
        name
        for name in names
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_quote(name)})")
    ]
    if holding:
        raise StoreError(
            f"the PostgreSQL database {where} already holds data (in {', '.join(holding)}): "
            "copy into an empty database; nothing was changed"
        )
    return names


def _escaped(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """Rows with their text as the PostgreSQL store holds it (`postgres_text.store_text`:
    a NUL character, which PostgreSQL text cannot hold, escaped)."""
    for row in rows:
        yield tuple(store_text(value) if isinstance(value, str) else value for value in row)


def _refused_value(source: sqlite3.Connection, table: _Table) -> str:
    """Where the first value PostgreSQL cannot take is (a value of another type than its
    column's), or "" if none is found."""
    for row in source.execute(table.select()):
        for column, kind, value in zip(table.columns, table.types, row, strict=True):
            expected = _PYTHON_TYPES.get(kind, (object,))
            if value is None or (isinstance(value, expected) and not isinstance(value, bool)):
                continue
            problem = f"a {type(value).__name__} value where PostgreSQL's column is {kind}"
            key = ", ".join(f"{table.columns[at]}={row[at]!r}" for at in table.key)
            return f"; the row with {key} holds {problem} in column {column}"
    return ""


async def _copy_table(
    source: sqlite3.Connection, conn: asyncpg.Connection, table: _Table, path: Path
) -> int:
    """COPY one table's rows; the number copied (checked against the source's count)."""
    (count,) = source.execute(f"SELECT count(*) FROM {_quote(table.name)}").fetchone()
    try:
        status = await conn.copy_records_to_table(
            table.name, records=_escaped(source.execute(table.select())),
            columns=list(table.columns),
        )  # fmt: skip
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the table {table.name} of {path}: {exc}") from None
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, TypeError,
            ValueError, OverflowError) as exc:  # fmt: skip
        detail = getattr(exc, "detail", None)
        why = f"{exc} ({detail})" if detail else str(exc)
        raise StoreError(
            f"cannot copy the table {table.name}: {why}{_refused_value(source, table)}"
        ) from None
    copied = int(status.split()[-1])
    if copied != count:
        raise StoreError(f"the table {table.name}: {copied} rows copied of {count}")
    if table.keeps_rowid and count:
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence($1, 'rowid'), max(rowid)) "
            f"FROM {_quote(table.name)}",
            table.name,
        )
    return copied


async def _copy_artifact_contents(
    source: sqlite3.Connection, conn: asyncpg.Connection, artifacts_dir: Path, report: CopyReport
) -> int:
    """COPY the bytes of each artifact's file into `artifact_contents`, one file read at a
    time; a file that is not copied goes in `report.missing_artifacts` with why
    (`artifact_file_content`). The number copied."""
    rows = list(source.execute("SELECT id, size FROM artifacts ORDER BY id"))
    directory: int | None = None
    missing = ""  # (why no file is: the directory cannot be opened)
    try:
        directory = os.open(artifacts_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        missing = exc.strerror or str(exc)

    def contents() -> Iterator[tuple[str, bytes]]:
        for artifact_id, size in rows:
            if directory is None:
                report.missing_artifacts.append(f"{artifact_id} ({missing})")
                continue
            content = artifact_file_content(directory, artifact_id, size)
            if isinstance(content, str):
                report.missing_artifacts.append(f"{artifact_id} ({content})")
                continue
            yield store_text(artifact_id), content

    try:
        status = await conn.copy_records_to_table(
            "artifact_contents", records=contents(), columns=["artifact_id", "content"]
        )
    finally:
        if directory is not None:
            os.close(directory)
    return int(status.split()[-1])


def artifact_file_content(directory: int, artifact_id: Any, size: Any) -> bytes | str:
    """The bytes of the artifact's file in the artifacts directory open as `directory`, or
    why it is not copied: an id not of the form ids are made in (`storage.new_id`: a
    UUID), so never a path out of the directory; a file that is missing, a symbolic link,
    not a regular file (a FIFO is opened without waiting for a writer), or not the size
    its row says."""
    if not isinstance(artifact_id, str) or not _ARTIFACT_ID.fullmatch(artifact_id):
        return "not an artifact id: not looked for"
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(artifact_id, flags, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link: not followed"
        return exc.strerror or str(exc)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size != size:
            return f"{info.st_size} bytes where its row says {size}"
        with open(descriptor, "rb", closefd=False) as handle:
            content = handle.read()
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(descriptor)
    if len(content) != size:  # (changed while read)
        return f"{len(content)} bytes read where its row says {size}"
    return content


async def copy_sqlite_to_postgres(path: Path, url: str, *, url_name: str = "--to") -> CopyReport:
    """Copy the SQLite database at `path` into the PostgreSQL database at `url` (migrated
    first, in the same transaction), which must hold no rows. `StoreError` in one line
    (never with the URL's password) when it cannot be; then the target is unchanged."""
    started = time.monotonic()
    where = target(url)
    source = open_source(path)
    try:
        conn = await connect_postgres(url, url_name, command_timeout=None)
        try:
            async with conn.transaction():
                await migrate(conn, where)
                report = CopyReport(path, where, await schema_version(conn))
                tables = await _plan(source, path, conn)
                names = await _lock_empty_target(conn, where)
                source.execute("BEGIN")  # (one snapshot of the source for every table)
                for table in tables:
                    report.rows[table.name] = await _copy_table(source, conn, table, path)
                if "artifacts" in report.rows:
                    report.rows["artifact_contents"] = await _copy_artifact_contents(
                        source, conn, path.parent / "artifacts", report
                    )
                source.execute("ROLLBACK")
            with contextlib.suppress(asyncpg.PostgresError):  # (committed: autovacuum would too)
                await conn.execute(f"ANALYZE {', '.join(map(_quote, names))}")
        except StoreError as exc:
            raise postgres_failure(exc, url) from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise postgres_failure(exc, url) from None
        finally:
            await close_quietly(conn)
    finally:
        source.close()
    report.seconds = time.monotonic() - started
    return report


def describe_report(report: CopyReport) -> list[str]:
    """The lines `minidevin db copy` prints for `report`."""
    rate = report.total / report.seconds if report.seconds > 0 else 0.0
    data_dir = report.source.parent
    return [
        f"copied {report.source} into {report.where} (schema version "
        f"{report.schema_version}): {report.total} rows in {report.seconds:.2f} s "
        f"({rate:,.0f} rows/s)",
        *(f"  {name}: {rows}" for name, rows in report.rows.items()),
        *_missing_lines(report.missing_artifacts),
        f"the secrets key and the JWT secret stay in {data_dir}: start the "
        f"PostgreSQL-backed server with that data directory (MINIDEVIN_DATA_DIR={data_dir})",
    ]


def _missing_lines(missing: list[str], shown: int = 20) -> list[str]:
    """The report's lines on artifact files not copied (the first `shown` by id)."""
    if not missing:
        return []
    more = [f"    ... and {len(missing) - shown} more"] if len(missing) > shown else []
    return [
        f"{len(missing)} artifact file(s) not copied (their rows are; a node without the "
        "file answers 404 for them):",
        *(f"    {line}" for line in missing[:shown]),
        *more,
    ]
