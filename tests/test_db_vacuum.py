"""`minidevin db vacuum` as a real subprocess: it shrinks a database after deletes, and
refuses (one line, exit 1, nothing changed) while a server holds the data directory."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from serve_process import ServeProcess

pytestmark = pytest.mark.sqlite_only  # about SQLite itself: VACUUM of the SQLite file

ROOT = Path(__file__).resolve().parent.parent
ROWS = 4000
PAYLOAD = "x" * 1000  # ~4 MB of event rows


def vacuum(data: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIDEVIN_")} | settings
    return subprocess.run(
        [sys.executable, "-m", "minidevin.cli", "db", "vacuum", "--data-dir", str(data)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stop(server: ServeProcess) -> None:
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    server.close()


def on_disk(database: Path) -> int:
    return sum(
        Path(f"{database}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{database}{suffix}").exists()
    )


def fill_then_delete(database: Path) -> None:
    """Rows of a task written, then deleted: their pages stay in the file as free pages."""
    with closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute("PRAGMA foreign_keys=ON")
        now = "2020-01-01T00:00:00.000Z"
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
            "status, created_at) VALUES ('t', 's', 'd', 'm', 'auto', 1, 'completed', ?)",
            (now,),
        )
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO events (task_id, seq, type, data, timestamp) VALUES ('t', ?, 'log', ?, ?)",
            ((seq, PAYLOAD, now) for seq in range(1, ROWS + 1)),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("DELETE FROM tasks WHERE id = 't'")  # (its events by cascade)


def test_vacuum_shrinks_a_database_after_deletes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServeProcess(data, {})  # a real data directory: migrated, locked, then freed
    stop(server)
    database = data / "minidevin.sqlite3"
    fill_then_delete(database)
    before = on_disk(database)
    assert before > ROWS * len(PAYLOAD)

    done = vacuum(data)

    assert done.returncode == 0, done.stderr
    after = on_disk(database)
    assert after < before // 10
    assert done.stdout.splitlines() == [
        f"{database}: {before} bytes before, {after} bytes after ({before - after} reclaimed)"
    ]
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM users").fetchone() == (1,)


def test_vacuum_refuses_while_a_server_holds_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServeProcess(data, {})
    try:
        database = data / "minidevin.sqlite3"
        before = database.read_bytes()
        done = vacuum(data)
        assert done.returncode == 1
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"minidevin: data directory {data} is in use")
        assert f"(pid {server.process.pid})" in lines[0]
        assert database.read_bytes() == before
    finally:
        stop(server)


def test_vacuum_without_a_database_says_so(tmp_path: Path) -> None:
    done = vacuum(tmp_path / "empty")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"minidevin: no database at {tmp_path}/empty/minidevin.sqlite3"
    ]
    assert not (tmp_path / "empty").exists()


def test_vacuum_on_postgresql_says_it_is_for_sqlite(tmp_path: Path) -> None:
    url = "postgresql://minidevin@127.0.0.1:9/minidevin"  # (never connected to)
    done = vacuum(tmp_path / "data", MINIDEVIN_DATABASE_URL=url)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "db vacuum is for the embedded SQLite store" in done.stderr
