"""Start or exit: a store that cannot be opened ends `minidevin serve` (and `run`) at once.

A database locked by another process past the bound, a read-only data directory,
a corrupt database, an empty or damaged `jwt_secret`: each is one line on stderr
(no traceback) and exit 1 within 30 s, never a process that neither listens nor
exits. Real processes, a real lock held by another SQLite connection, a real
read-only mount.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_process import free_port
from test_cli_serve import ROOT, serve_argv, serve_env

from minidevin.api import Runtime
from minidevin.runtime.auth import SecretFileError, load_jwt_secret
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import StoreError, open_store

# about SQLite itself: a real SQLite lock, a corrupt SQLite file, a read-only data directory
pytestmark = pytest.mark.sqlite_only

EXIT_WITHIN = 30.0  # what the issue promises; the runs below take seconds


def database(data: Path) -> Path:
    """A data directory with a migrated (WAL) database in it, as a stopped server leaves."""

    async def create() -> None:
        store = open_store(Settings(data_dir=data))
        await store.open()
        await store.close()

    asyncio.run(create())
    return data / "minidevin.sqlite3"


def start(data: Path, *argv: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`minidevin serve` on `data` (or `minidevin run ...` when `argv` says so): its end."""
    command = list(argv) or serve_argv(data, "--port", str(free_port()))
    began = time.monotonic()
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**serve_env(), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN + 10,
        check=False,
    )
    return done, time.monotonic() - began


def refused(done: subprocess.CompletedProcess[str], took: float, *phrases: str) -> None:
    """Exit 1 in time, and stderr ends with one `minidevin:` line saying `phrases`."""
    assert done.returncode == 1, done.stderr
    assert took < EXIT_WITHIN
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.endswith("\n")
    last = done.stderr.splitlines()[-1]
    assert last.startswith("minidevin: "), done.stderr
    for phrase in phrases:
        assert phrase in last, last
    assert "server_listening" not in done.stderr + done.stdout


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """The data directory of a database another connection holds `BEGIN EXCLUSIVE` on."""
    data = tmp_path / "data"
    holder = sqlite3.connect(database(data), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield data
    holder.execute("ROLLBACK")
    holder.close()


def test_a_locked_database_ends_serve_after_the_bound(held_lock: Path) -> None:
    done, took = start(held_lock, MINIDEVIN_STORE_RETRY_SECONDS="1")
    refused(done, took, str(held_lock / "minidevin.sqlite3"), "locked by another process")
    assert took >= 1.0  # the lock was waited out first (a short one passes unnoticed)
    assert "store_open_retrying" in done.stderr


def test_a_locked_database_without_wal_ends_serve_too(tmp_path: Path) -> None:
    """A database still in rollback-journal mode: the lock fails the first PRAGMA."""
    data = tmp_path / "data"
    data.mkdir()
    holder = sqlite3.connect(data / "minidevin.sqlite3", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        done, took = start(data, MINIDEVIN_STORE_RETRY_SECONDS="1")
    finally:
        holder.close()
    refused(done, took, "locked by another process")


def test_a_locked_database_ends_minidevin_run(held_lock: Path, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "minidevin.cli", "run", "say hi", "--dir", str(tmp_path)]
    done, took = start(
        held_lock, *run, "--data-dir", str(held_lock), MINIDEVIN_STORE_RETRY_SECONDS="1"
    )
    refused(done, took, "locked by another process")
    assert done.stdout == ""


def test_once_the_lock_is_gone_the_server_starts(tmp_path: Path) -> None:
    """The refusal changed nothing: the same directory starts once the holder let go."""
    data = tmp_path / "data"
    holder = sqlite3.connect(database(data), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    done, took = start(data, MINIDEVIN_STORE_RETRY_SECONDS="0.5")
    refused(done, took, "locked")
    holder.close()

    async def starts() -> None:
        async with Runtime(Settings(data_dir=data, jwt_secret="s" * 40)) as runtime:
            assert await runtime.store.fetch_one("SELECT 1 AS one") == {"one": 1}

    asyncio.run(starts())


def test_a_corrupt_database_ends_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = database(data)
    path.write_bytes(b"this is not a database, " * 400)
    done, took = start(data)
    refused(done, took, str(path), "corrupt")


@pytest.fixture
def read_only_data(tmp_path: Path) -> Iterator[Path]:
    """A data directory with a database, on a read-only bind mount of itself (root
    ignores file modes: a mount is read-only for root too)."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    data = tmp_path / "data"
    database(data)
    mounted = subprocess.run(["mount", "--bind", str(data), str(data)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(data)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield data
    finally:
        subprocess.run(["umount", str(data)], check=True)


def test_a_read_only_data_directory_ends_serve(read_only_data: Path) -> None:
    done, took = start(read_only_data)
    refused(done, took, str(read_only_data), "read-only file system")


def test_a_read_only_data_directory_raises_store_error_in_runtime_start(
    read_only_data: Path,
) -> None:
    async def start_it() -> None:
        await Runtime(Settings(data_dir=read_only_data, jwt_secret="s" * 40)).start()

    with pytest.raises(StoreError, match="read-only file system"):
        asyncio.run(start_it())


def test_a_corrupt_database_raises_store_error_and_leaves_nothing_open(tmp_path: Path) -> None:
    """Embedded: `Runtime.start()` raises `StoreError`; no connection thread stays behind
    (one would keep the process from exiting), and the data directory is free again."""
    data = tmp_path / "data"
    path = database(data)
    path.write_bytes(b"\0garbage" * 1000)
    before = threading.active_count()
    settings = Settings(data_dir=data, jwt_secret="s" * 40)

    async def start_it() -> None:
        await Runtime(settings).start()

    with pytest.raises(StoreError, match="corrupt"):
        asyncio.run(start_it())
    assert threading.active_count() == before
    path.unlink()  # moved away: the same directory starts (the lock was released)

    async def starts() -> None:
        async with Runtime(settings):
            pass

    asyncio.run(starts())


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty"), (b"\0" * 64, "is corrupt"), (b"short", "is corrupt")],
    ids=["empty", "zeros", "short"],
)
def test_a_damaged_jwt_secret_ends_serve(tmp_path: Path, content: bytes, says: str) -> None:
    data = tmp_path / "data"
    database(data)
    (data / "jwt_secret").write_bytes(content)
    env = {k: v for k, v in serve_env().items() if k != "MINIDEVIN_JWT_SECRET"}
    command = serve_argv(data, "--port", str(free_port()))
    began = time.monotonic()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=40, check=False
    )
    refused(done, time.monotonic() - began, str(data / "jwt_secret"), says)
    assert (data / "jwt_secret").read_bytes() == content  # left for the operator to judge


def test_the_jwt_secret_is_written_whole_and_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = load_jwt_secret(data, None)
    path = data / "jwt_secret"
    assert path.read_text() == secret and len(secret) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in data.iterdir()) == ["jwt_secret"]  # no temporary left
    assert load_jwt_secret(data, None) == secret  # kept across starts
    path.write_text("")
    with pytest.raises(SecretFileError, match=f"{path} is empty"):
        load_jwt_secret(data, None)
