"""A throwaway PostgreSQL server for the tests: started once a run, on loopback only.

`ThrowawayPostgres.start()` runs `initdb` into a temporary directory (as the
`postgres` user when the tests run as root: `initdb` refuses root), then
`pg_ctl start` listening on 127.0.0.1 at a free port, its socket in that
directory, with durability off for speed (`fsync=off`: a test server's data
dies with it anyway) and trust authentication for loopback.
`create_database(name)` gives a fresh database's URL; `stop()` stops the
server and removes its directory. `SyncPg` runs statements from any thread
(the harness reads and plants from inside a test's loop, as another process
would). Without PostgreSQL installed, `PostgresMissing` says why.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")
SUPERUSER = "postgres"


class PostgresMissing(Exception):
    """PostgreSQL's server programs are not installed here (the tests that need it skip)."""


def postgres_bin_dir() -> Path:
    """The directory of `initdb`, `pg_ctl` and `postgres`: the newest under
    /usr/lib/postgresql, else the one on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresMissing(
            "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH)"
        )
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SyncPg:
    """Blocking calls into PostgreSQL from any thread: asyncpg on a private loop thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def execute(self, url: str, *statements: str) -> list[Any]:
        """Run `statements` on a new connection to `url`; the last one's rows."""

        async def go() -> list[Any]:
            conn = await asyncpg.connect(url)
            try:
                rows: list[Any] = []
                for statement in statements:
                    rows = await conn.fetch(statement)
                return rows
            finally:
                await conn.close()

        return self.run(go())

    def connect(self, url: str) -> asyncpg.Connection:
        return self.run(asyncpg.connect(url))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class ThrowawayPostgres:
    """One PostgreSQL server for a test run, in its own temporary directory."""

    def __init__(self) -> None:
        self.bin_dir = postgres_bin_dir()
        self.port = 0
        self.dir: Path | None = None
        self._options = ""
        self.sync = SyncPg()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-test-"))
        if self._as_postgres:
            shutil.chown(self.dir, SUPERUSER, SUPERUSER)
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")  # fmt: skip
        self.port = _free_port()
        options = " ".join(
            f"-c {setting}"
            for setting in (
                "listen_addresses=127.0.0.1",
                f"port={self.port}",
                f"unix_socket_directories={self.dir}",
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
                "max_connections=300",
                "shared_buffers=64MB",
            )
        )
        self._options = options
        self.resume()

    def halt(self) -> None:
        """Stop the server, its data kept (as a restart or a crash of the database
        would): connections end and new ones are refused until `resume()`."""
        assert self.dir is not None
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server (again) on its data, at the same port."""
        assert self.dir is not None
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                  "-o", self._options, "-w", "-t", "60", "start")  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database (any earlier one of that name is dropped); its URL."""
        self.sync.execute(
            self.url(),
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)

    def stop(self) -> None:
        if self.dir is not None:
            try:
                self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
        self.sync.close()


class TestDatabases:
    """New databases for tests, each a copy of one template the store migrated once.

    `create()` gives a fresh database's (name, URL) in a few milliseconds (a copy
    of the template, so the store finds its schema current). `release(name)`
    says a test is done with one: it is dropped at the next `create()`, in the
    background (by then whatever the test left open on it, a runtime its client
    closes after the test's own fixtures, is closed too). `close()` drops the
    rest and waits for the drops.
    """

    __test__ = False  # (not a test class, whatever its name)
    TEMPLATE = "minidevin_template"

    def __init__(self, server: ThrowawayPostgres) -> None:
        from minidevin.runtime.storage.postgres import PostgresStore

        self.server = server
        url = server.create_database(self.TEMPLATE)

        async def migrate() -> None:
            store = PostgresStore(url)
            await store.open()
            await store.close()

        async def admin_pool() -> asyncpg.Pool:
            return await asyncpg.create_pool(server.url(), min_size=1, max_size=4)

        server.sync.run(migrate())
        self._admin = server.sync.run(admin_pool())
        self._released: list[str] = []
        self._drops: list[Any] = []

    def create(self) -> tuple[str, str]:
        self._drop_released()
        name = "t_" + uuid.uuid4().hex
        self.server.sync.run(
            self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.TEMPLATE}"')
        )
        return name, self.server.url(name)

    def release(self, name: str) -> None:
        self._released.append(name)

    def _drop_released(self) -> None:
        self._drops = [drop for drop in self._drops if not drop.done()]
        for name in self._released:
            statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            self._drops.append(
                asyncio.run_coroutine_threadsafe(
                    self._admin.execute(statement), self.server.sync._loop
                )
            )
        self._released = []

    def close(self) -> None:
        self._drop_released()
        try:
            for drop in self._drops:
                drop.result(60)
        finally:
            self.server.sync.run(self._admin.close())
