"""`minidevin db migrate` and `minidevin db copy` as real subprocesses, on a throwaway
PostgreSQL server: an installation made through the HTTP API on SQLite, copied, answers
the same on the PostgreSQL store (same data directory); every table's rows come back
value for value and type for type; a target holding data, a held data directory, a value
PostgreSQL cannot hold, a newer schema and an unreachable server are one line and exit 1,
with nothing changed and never the URL's password."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from fix_a_test import fix_a_test_turns
from http_helpers import PASSWORD, User, artifacts_of, expect_json, get_task, serve, sign_up, stream
from pg_server import ThrowawayPostgres
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish
from serve_process import ServeProcess

from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import open_store
from minidevin.runtime.storage.postgres_schema import SCHEMA_VERSION as PG_VERSION
from minidevin.runtime.storage.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
DB_PASSWORD = "Pw-s3cret-9f2c"  # in the URLs: never in any output
SECRET_VALUE = "sk-live-" + "7" * 40


def minidevin_db(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MINIDEVIN_")}
    return subprocess.run(
        [sys.executable, "-m", "minidevin.cli", "db", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed with exit 1 (and printed nothing)."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minidevin: "), done.stderr
    assert DB_PASSWORD not in done.stderr
    return lines[0]


@pytest.fixture
def pg_url(postgres_server: ThrowawayPostgres) -> Iterator[str]:
    """A fresh empty database's URL, with a password in it (trust authentication: unused)."""
    name = "copy_" + uuid.uuid4().hex
    url = postgres_server.create_database(name)
    yield url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    postgres_server.sync.execute(postgres_server.url(), f'DROP DATABASE "{name}" WITH (FORCE)')


def pg_rows(server: ThrowawayPostgres, url: str, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in server.sync.execute(url, sql)]


def pg_tables(server: ThrowawayPostgres, url: str) -> set[str]:
    return {
        row[0]
        for row in pg_rows(
            server, url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }


def typed(rows: list[tuple[Any, ...]]) -> list[tuple[tuple[str, Any], ...]]:
    """Rows as (type, value) pairs, in a fixed order: equal only if the types are too."""
    return sorted((tuple((type(v).__name__, v) for v in row) for row in rows), key=repr)


def small_installation(data: Path) -> Path:
    """A migrated SQLite database with a user, a session, a task and a few events."""
    done = minidevin_db("migrate", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    database = data / "minidevin.sqlite3"
    now = "2020-01-01T00:00:00.000Z"
    with closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(
            "INSERT INTO users (id, email, name, created_at) VALUES ('u', 'v@example.com', 'V', ?)",
            (now,),
        )
        db.execute(
            "INSERT INTO sessions (id, user_id, name, status, working_directory, created_at, "
            "updated_at) VALUES ('s', 'u', 's', 'active', '/nowhere', ?, ?)",
            (now, now),
        )
        db.execute(
            "INSERT INTO tasks (id, session_id, description, model, run_mode, max_iterations, "
            "status, created_at, max_cost_usd) VALUES ('t', 's', 'd', 'm', 'auto', 1, "
            "'completed', ?, 2.5)",
            (now,),
        )
        db.executemany(
            "INSERT INTO events (task_id, seq, type, data, timestamp) VALUES ('t', ?, 'log', ?, ?)",
            ((seq, json.dumps({"n": seq}), now) for seq in range(1, 101)),
        )
    return database


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the copy, through the API on both sides -----------------------------------------------------


async def answers(client: Any, user: User, session_id: str, task_id: str) -> dict[str, Any]:
    """What the API says about the installation (artifact bytes included)."""
    said = {
        "sessions": await expect_json(await client.get("/api/sessions", headers=user.key)),
        "session": await expect_json(
            await client.get(f"/api/sessions/{session_id}", headers=user.key)
        ),
        "task": await get_task(client, user, task_id),
        "artifacts": await artifacts_of(client, user, task_id),
        "secrets": await expect_json(await client.get("/api/secrets", headers=user.bearer)),
        "keys": await expect_json(await client.get("/api/auth/api-keys", headers=user.bearer)),
    }
    for artifact in said["artifacts"].values():
        path = f"/api/tasks/{task_id}/artifacts/{artifact['id']}"
        artifact["bytes"] = await (await client.get(path, headers=user.key)).read()
    return said


def check_every_row_copied(
    server: ThrowawayPostgres, url: str, database: Path, printed: list[str]
) -> None:
    """Every table of the installation has rows, and each comes back value for value and
    type for type (rowids too, the identity going on after them)."""
    with closing(sqlite3.connect(database)) as source:
        tables = [
            name
            for (name,) in source.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        # (PostgreSQL's own: the artifacts' bytes, checked below, the nodes' generations and
        # the runs' claims)
        own = {"schema_version", "artifact_contents", "node_generations", "task_claims"}
        assert pg_tables(server, url) == {*tables, *own}
        for table in tables:
            columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
            pg_columns = pg_rows(server, url, (
                f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
            ))  # fmt: skip
            if ("rowid",) in pg_columns:
                columns.insert(0, "rowid")
            listed = ", ".join(f'"{column}"' for column in columns)
            expected = list(source.execute(f"SELECT {listed} FROM {table}"))
            assert expected, f"the installation has no {table} rows: the copy of it is untested"
            copied = pg_rows(server, url, f"SELECT {listed} FROM {table}")
            assert typed(copied) == typed(expected), table
            assert f"  {table}: {len(expected)}" in printed
            if columns[0] == "rowid":
                ((following, last),) = pg_rows(server, url, (
                    f"SELECT nextval(pg_get_serial_sequence('{table}', 'rowid')), "
                    f"(SELECT max(rowid) FROM {table})"
                ))  # fmt: skip
                assert following == last + 1, table
        artifact_ids = [row[0] for row in source.execute("SELECT id FROM artifacts")]
    files = {id_: (database.parent / "artifacts" / id_).read_bytes() for id_ in artifact_ids}
    contents = pg_rows(server, url, "SELECT artifact_id, content FROM artifact_contents")
    assert dict(contents) == files and files
    assert f"  artifact_contents: {len(files)}" in printed
    assert pg_rows(server, url, "SELECT count(*) FROM node_generations") == [(0,)]


async def test_a_copied_installation_answers_the_same_on_postgresql(
    tmp_path: Path,
    openai_server: ScriptedOpenAIServer,
    buggy_repo: Path,
    postgres_server: ThrowawayPostgres,
    pg_url: str,
) -> None:
    data = tmp_path / "data"  # no jwt_secret: the generated one, in the data directory, must do
    common = {"webhook_allow_private": True, "webhook_retry_base_delay": 30.0}
    openai_server.script(fix_a_test_turns())
    async with serve(Settings(data_dir=data, **common), openai_server) as client:
        user = await sign_up(client)  # (a user, a JWT, an API key)
        login = {"email": user.email, "password": PASSWORD}
        token = await expect_json(await client.post("/api/auth/login", json=login))
        revoked = {"Authorization": f"Bearer {token['access_token']}"}
        assert (await client.post("/api/auth/logout", headers=revoked)).status == 204
        secret = {"name": "API_TOKEN", "value": SECRET_VALUE}
        await expect_json(await client.post("/api/secrets", json=secret, headers=user.bearer), 201)
        session = await expect_json(
            await client.post(
                "/api/sessions",
                json={"name": "bug fix", "working_directory": str(buggy_repo),
                      "secrets": ["API_TOKEN"], "approval_policy": "never",
                      "webhook_url": f"http://127.0.0.1:{closed_port()}/hook",
                      "webhook_secret": "whsec-0123456789"},
                headers=user.key,
            ),
            201,
        )  # fmt: skip
        create = {"description": "Fix the failing test in test_calc.py", "model": "gpt-4o"}
        once = {**user.key, "Idempotency-Key": "create-fix-1"}
        tasks_path = f"/api/sessions/{session['id']}/tasks"
        task = await expect_json(await client.post(tasks_path, json=create, headers=once), 201)
        live, code = await stream(client, task["id"], user.token)
        assert code == 1000 and live[-1]["status"] == "completed", live[-1]
        before = await answers(client, user, session["id"], task["id"])
    assert before["task"]["status"] == "completed" and before["artifacts"]

    database = data / "minidevin.sqlite3"
    done = minidevin_db("copy", "--from", f"sqlite://{database}", "--to", pg_url)

    assert done.returncode == 0, done.stderr
    assert DB_PASSWORD not in done.stdout + done.stderr
    printed = done.stdout.splitlines()
    assert printed[0].startswith(f"copied {database} into 127.0.0.1:{postgres_server.port}/")
    assert printed[-1].startswith(f"the secrets key and the JWT secret stay in {data}")
    assert not any("not copied" in line for line in printed)
    check_every_row_copied(postgres_server, pg_url, database, printed)

    openai_server.script(
        [ScriptedTurn(tool_calls=[("terminal", {"command": "printenv API_TOKEN | sha256sum"})]),
         finish("read the secret")]
    )  # fmt: skip
    on_postgres = Settings(data_dir=data, database_url=pg_url, **common)
    async with serve(on_postgres, openai_server) as client:
        assert (await client.post("/api/auth/login", json=login)).status == 200
        assert (await client.get("/api/sessions", headers=revoked)).status == 401
        assert await answers(client, user, session["id"], task["id"]) == before
        replay, code = await stream(client, task["id"], user.token)
        assert code == 1000 and replay == live
        # the same Idempotency-Key gets the same answer (the sealed response was copied)
        again = await client.post(tasks_path, json=create, headers=once)
        assert again.status == 201 and await again.json() == task
        # new rows go on after the copied ones; the sealed secret opens with the same key
        digest_it = {"description": "Show the token's digest", "model": "gpt-4o"}
        second = await expect_json(
            await client.post(tasks_path, json=digest_it, headers=user.key), 201
        )
        events, code = await stream(client, second["id"], user.token)
        assert code == 1000 and events[-1]["status"] == "completed", events[-1]
        assert hashlib.sha256(SECRET_VALUE.encode() + b"\n").hexdigest() in json.dumps(events)
        tasks = await expect_json(await client.get(tasks_path, headers=user.key))
        assert [brief["id"] for brief in tasks] == [task["id"], second["id"]]

    # a node with a data directory of its own (no artifact file in it) serves the copied
    # artifacts from the database, byte for byte
    elsewhere = Settings(data_dir=tmp_path / "elsewhere", database_url=pg_url, **common)
    async with serve(elsewhere, openai_server) as client:
        for artifact in before["artifacts"].values():
            path = f"/api/tasks/{task['id']}/artifacts/{artifact['id']}"
            response = await client.get(path, headers=user.key)
            assert response.status == 200 and await response.read() == artifact["bytes"]


# -- refusals ------------------------------------------------------------------------------------


def test_a_target_holding_data_is_refused_and_left_as_it_was(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    database = small_installation(tmp_path / "data")
    first = minidevin_db("copy", "--from", f"sqlite://{database}", "--to", pg_url)
    assert first.returncode == 0, first.stderr
    assert "  events: 100" in first.stdout.splitlines()

    line = one_line_failure(minidevin_db("copy", "--from", str(database), "--to", pg_url))

    assert line == (
        f"minidevin: the PostgreSQL database 127.0.0.1:{postgres_server.port}/"
        f"{pg_url.rsplit('/', 1)[1]} already holds data (in events, sessions, tasks, users): "
        "copy into an empty database; nothing was changed"
    )
    assert pg_rows(postgres_server, pg_url, "SELECT count(*) FROM events") == [(100,)]


def test_the_copy_refuses_while_a_server_holds_the_data_directory(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    data = tmp_path / "data"
    server = ServeProcess(data, {})
    try:
        line = one_line_failure(
            minidevin_db("copy", "--from", f"sqlite://{data}/minidevin.sqlite3", "--to", pg_url)
        )
        assert line.startswith(f"minidevin: data directory {data} is in use")
        assert f"(pid {server.process.pid})" in line
        assert pg_tables(postgres_server, pg_url) == set()
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
        server.close()


def test_a_value_postgresql_cannot_hold_is_named_and_nothing_is_written(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    database = small_installation(tmp_path / "data")
    with closing(sqlite3.connect(database)) as db, db:  # (SQLite keeps any type in a column)
        db.execute("UPDATE tasks SET max_iterations = 'lots' WHERE id = 't'")

    line = one_line_failure(minidevin_db("copy", "--from", str(database), "--to", pg_url))

    assert line.startswith("minidevin: cannot copy the table tasks: ")
    assert line.endswith(
        "the row with id='t' holds a str value where PostgreSQL's column is bigint in column "
        "max_iterations"
    )
    assert pg_tables(postgres_server, pg_url) == set()  # (its migration rolled back too)


async def test_text_with_nul_is_copied_and_reads_back_as_it_was(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    """PostgreSQL text cannot hold NUL: the copy escapes it as the PostgreSQL store does,
    and the store gives it back as SQLite held it (SOH, the escape, included)."""
    database = small_installation(tmp_path / "data")
    description = "a\x00b\x01c\x010"
    with closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE tasks SET description = ? WHERE id = 't'", (description,))
    done = minidevin_db("copy", "--from", str(database), "--to", pg_url)
    assert done.returncode == 0, done.stderr
    store = open_store(Settings(data_dir=tmp_path / "pg-data", database_url=pg_url))
    await store.open()
    try:
        owner = await store.task_owner("t")
        assert owner is not None
        row = await store.task_row("t", owner)
        assert row is not None and row["description"] == description
    finally:
        await store.close()


async def test_a_missing_artifact_file_is_named_and_the_others_are_copied(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    database = small_installation(tmp_path / "data")
    artifacts = tmp_path / "data" / "artifacts"
    artifacts.mkdir()
    kept, lost = str(uuid.uuid4()), str(uuid.uuid4())
    content = bytes(range(256)) * 4  # (every byte value: bytea, not text)
    (artifacts / kept).write_bytes(content)
    with closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            "INSERT INTO artifacts (id, task_id, name, type, content_type, size, created_at) "
            "VALUES (?, 't', ?, 'diff', 'text/x-diff', ?, '2020-01-01T00:00:00.000Z')",
            [(kept, "diff.patch", len(content)), (lost, "run1-diff.patch", 7)],
        )

    done = minidevin_db("copy", "--from", str(database), "--to", pg_url)

    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert "  artifacts: 2" in printed and "  artifact_contents: 1" in printed
    at = printed.index(
        "1 artifact file(s) not copied (their rows are; a node without the file answers 404 "
        "for them):"
    )
    assert printed[at + 1] == f"    {lost} (No such file or directory)"
    store = open_store(Settings(data_dir=tmp_path / "pg-data", database_url=pg_url))
    await store.open()
    try:
        assert await store.artifact_content_part(kept, 0, 1 << 30) == content
        assert await store.artifact_content_part(lost, 0, 1 << 30) is None
        assert await store.artifact_row("t", lost) is not None
    finally:
        await store.close()


async def test_only_regular_files_of_the_rows_size_beneath_the_directory_are_copied(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    """A symbolic link (to a file of the right size), a FIFO (no writer: the copy must not
    wait for one), a file of another size than its row's, and a row whose id is a path out
    of the directory are each named and left out; the regular file is copied."""
    database = small_installation(tmp_path / "data")
    artifacts = tmp_path / "data" / "artifacts"
    artifacts.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not an artifact\n")
    size = len(outside.read_bytes())
    kept, linked, fifo, shorter = (str(uuid.uuid4()) for _ in range(4))
    (artifacts / kept).write_bytes(b"x" * size)
    (artifacts / linked).symlink_to(outside)
    os.mkfifo(artifacts / fifo)
    (artifacts / shorter).write_bytes(b"x" * (size - 2))
    escaping = str(outside)  # (an absolute id: `artifacts / id` is that path)
    with closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            "INSERT INTO artifacts (id, task_id, name, type, content_type, size, created_at) "
            "VALUES (?, 't', ?, 'diff', 'text/x-diff', ?, '2020-01-01T00:00:00.000Z')",
            [(id_, f"run{n}-diff.patch", size)
             for n, id_ in enumerate((kept, linked, fifo, shorter, escaping))],
        )  # fmt: skip

    done = minidevin_db("copy", "--from", str(database), "--to", pg_url, timeout=30)

    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert "  artifacts: 5" in printed and "  artifact_contents: 1" in printed
    at = printed.index(
        "4 artifact file(s) not copied (their rows are; a node without the file answers 404 "
        "for them):"
    )
    assert set(printed[at + 1 : at + 5]) == {
        f"    {linked} (a symbolic link: not followed)",
        f"    {fifo} (not a regular file)",
        f"    {shorter} ({size - 2} bytes where its row says {size})",
        f"    {escaping} (not an artifact id: not looked for)",
    }
    rows = pg_rows(postgres_server, pg_url, "SELECT artifact_id, content FROM artifact_contents")
    assert rows == [(kept, b"x" * size)]


def test_a_column_postgresql_lacks_stops_the_copy_before_anything_is_written(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    database = small_installation(tmp_path / "data")
    with closing(sqlite3.connect(database)) as db:
        db.execute("ALTER TABLE users ADD COLUMN nickname TEXT")

    line = one_line_failure(minidevin_db("copy", "--from", str(database), "--to", pg_url))

    assert line == (
        f"minidevin: the table users has other columns in {database} than in PostgreSQL "
        "(only in SQLite: ['nickname'], only in PostgreSQL: []): this minidevin cannot copy it"
    )
    assert pg_tables(postgres_server, pg_url) == set()


def test_an_older_source_is_migrated_then_copied(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = data / "minidevin.sqlite3"
    with closing(sqlite3.connect(database)) as db:
        db.executescript("".join(MIGRATIONS[:5]) + "PRAGMA user_version = 5;")
        db.execute(
            "INSERT INTO users (id, email, name, created_at) VALUES "
            "('u', 'v@example.com', 'V', '2020-01-01T00:00:00.000Z')"
        )
        db.commit()

    done = minidevin_db("copy", "--from", f"sqlite://{data}", "--to", pg_url)

    assert done.returncode == 0, done.stderr
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert pg_rows(postgres_server, pg_url, "SELECT id, token_version FROM users") == [("u", 0)]


# -- db migrate ----------------------------------------------------------------------------------


def test_migrate_brings_each_store_up_to_date_and_says_its_version(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    data = tmp_path / "data"
    database = data / "minidevin.sqlite3"
    first, second = (minidevin_db("migrate", "--data-dir", str(data)) for _ in range(2))
    assert first.stdout == f"{database}: schema version {SCHEMA_VERSION} (was 0)\n", first.stderr
    assert second.stdout == f"{database}: schema version {SCHEMA_VERSION} (already current)\n"
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)

    env = {"MINIDEVIN_DATABASE_URL": pg_url}
    first, second = (minidevin_db("migrate", env=env) for _ in range(2))
    where = f"127.0.0.1:{postgres_server.port}/{pg_url.rsplit('/', 1)[1]}"
    assert first.stdout == f"{where}: schema version {PG_VERSION} (was 0)\n", first.stderr
    assert second.stdout == f"{where}: schema version {PG_VERSION} (already current)\n"
    assert "users" in pg_tables(postgres_server, pg_url)


def test_migrate_refuses_a_newer_schema_and_an_unreachable_server_in_one_line(
    tmp_path: Path, postgres_server: ThrowawayPostgres, pg_url: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with closing(sqlite3.connect(data / "minidevin.sqlite3")) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    line = one_line_failure(minidevin_db("migrate", "--data-dir", str(data)))
    assert f"has schema version {SCHEMA_VERSION + 1}, newer than this minidevin" in line

    postgres_server.sync.execute(
        pg_url,
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "INSERT INTO schema_version (version) VALUES (99)",
    )
    line = one_line_failure(minidevin_db("migrate", env={"MINIDEVIN_DATABASE_URL": pg_url}))
    assert "has schema version 99, newer than this minidevin understands" in line

    nowhere = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{closed_port()}/none"
    line = one_line_failure(minidevin_db("migrate", env={"MINIDEVIN_DATABASE_URL": nowhere}))
    assert line.startswith("minidevin: cannot reach the PostgreSQL server 127.0.0.1:")
    line = one_line_failure(minidevin_db("copy", "--from", str(data), "--to", nowhere))
    assert "newer than this minidevin understands" in line  # (the source is checked first)
    database = small_installation(tmp_path / "other")
    line = one_line_failure(minidevin_db("copy", "--from", str(database), "--to", nowhere))
    assert line.startswith("minidevin: cannot reach the PostgreSQL server 127.0.0.1:")
    assert line.endswith("start it, or fix --to")
