"""Shared fixtures: a scripted OpenAI server, a runtime on a temp data dir, a buggy repo.

Every test that asks for `database_url` (itself, or through `settings` or `runtime`)
runs twice, ids `sqlite` and `postgresql`: on SQLite in the test's data directory,
then on a PostgreSQL database of its own in the run's throwaway server (skipped, with
the reason, where PostgreSQL is not installed). A test about SQLite itself (its file,
locks, vacuum, sync) is marked `sqlite_only` and runs once, on SQLite.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from scripted_provider import ScriptedOpenAIServer

from minidevin.api import Runtime
from minidevin.runtime.settings import Settings

CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = (
    "from calc import add\n\n"
    "assert add(2, 3) == 5, f'add(2, 3) returned {add(2, 3)}'\n"
    "print('1 passed')\n"
)


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    """Actor threads are non-daemon: never let one outlive its test."""
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)


@pytest.fixture
def scripted() -> Iterator[ScriptedOpenAIServer]:
    """A scripted provider on its own thread: for tests that block on HTTP calls."""
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture
async def openai_server() -> AsyncIterator[ScriptedOpenAIServer]:
    async with ScriptedOpenAIServer() as server:
        yield server


BACKEND_NAMES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only: about SQLite itself (its file, locks, vacuum, sync): runs on SQLite only",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`database_url` is each backend in turn (SQLite only for a `sqlite_only` test)."""
    if "database_url" in metafunc.fixturenames:
        sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        names = BACKEND_NAMES[:1] if sqlite_only else BACKEND_NAMES
        metafunc.parametrize("database_url", names, indirect=True, ids=names)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The store the test's API runs on: None for SQLite (in the data directory), else
    the URL of a new PostgreSQL database of the test's own (dropped after it)."""
    yield from _database_on(request, getattr(request, "param", "sqlite"))


def _database_on(request: pytest.FixtureRequest, backend: str) -> Iterator[str | None]:
    """None for SQLite; else a new PostgreSQL database's URL, dropped when this ends."""
    if backend == "sqlite":
        yield None
        return
    databases = request.getfixturevalue("postgres_databases")
    name, url = databases.create()
    try:
        yield url
    finally:
        databases.release(name)


@pytest.fixture
def another_database_url(
    request: pytest.FixtureRequest, database_url: str | None
) -> Iterator[Callable[[], str | None]]:
    """For a test with a second installation: a call gives another database on the
    test's backend (None for SQLite: its data directory is its database)."""
    made: list[str] = []

    def another() -> str | None:
        if database_url is None:
            return None
        name, url = request.getfixturevalue("postgres_databases").create()
        made.append(name)
        return url

    yield another
    if made:
        databases = request.getfixturevalue("postgres_databases")
        for name in made:
            databases.release(name)


@pytest.fixture(scope="module", params=BACKEND_NAMES)
def shared_database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """`database_url` for a server a module's tests share: each backend in turn."""
    yield from _database_on(request, request.param)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
        jwt_secret="test-secret-" + "x" * 32,
        rate_limit_authenticated=0,
        rate_limit_anonymous=0,
        rate_limit_login=0,
        allow_unsandboxed_multiuser=True,  # (tests register many users, sandbox or not)
    )


def provider_env(server: ScriptedOpenAIServer) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": server.base_url}


@pytest.fixture
async def runtime(
    settings: Settings, openai_server: ScriptedOpenAIServer
) -> AsyncIterator[Runtime]:
    async with Runtime(settings, provider_env=provider_env(openai_server)) as rt:
        yield rt


@pytest.fixture
def buggy_repo(tmp_path: Path) -> Path:
    """A git repository whose one test fails until `add` adds."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "calc.py").write_text(CALC)
    (repo / "test_calc.py").write_text(TEST_CALC)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "initial"], cwd=repo, check=True)
    return repo


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One throwaway PostgreSQL server for the run (a `pg_server.ThrowawayPostgres`,
    loopback only), stopped at its end; the tests that need it skip where PostgreSQL is
    not installed."""
    from pg_server import PostgresMissing, ThrowawayPostgres

    try:
        server = ThrowawayPostgres()
    except PostgresMissing as missing:
        pytest.skip(str(missing))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: Any) -> Iterator[Any]:
    """Fresh migrated databases for the run's tests (`pg_server.TestDatabases`): each a
    copy of one template the store migrated once."""
    from pg_server import TestDatabases

    databases = TestDatabases(postgres_server)
    try:
        yield databases
    finally:
        databases.close()
