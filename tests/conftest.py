"""Shared fixtures: a scripted OpenAI server, a runtime on a temp data dir, a buggy repo."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
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
