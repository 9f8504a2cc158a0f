"""The blocking embedding API: plain calls and an ordinary iterator, no event loop in sight."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minidevin import BlockingRuntime, Runtime, Settings
from minidevin.runtime.errors import NotFound

EXAMPLES = Path(__file__).parent.parent / "examples"
STARTED_BY_THE_CONSTRUCTOR = {"start"}


def public_calls(cls: type) -> dict[str, inspect.Signature]:
    """The class's public functions, its mixins' included (`Runtime` is one of several)."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__[:-1]):
        members.update(vars(klass))
    return {
        name: inspect.signature(member)
        for name, member in members.items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def runtime_calls() -> dict[str, inspect.Signature]:
    return {
        name: signature
        for name, signature in public_calls(Runtime).items()
        if inspect.iscoroutinefunction(getattr(Runtime, name))
        or inspect.isasyncgenfunction(getattr(Runtime, name))
    }


def test_every_runtime_call_has_a_blocking_twin_with_the_same_parameters() -> None:
    wanted = runtime_calls()
    assert {"list_sessions", "get_session", "delete_session", "list_tasks", "artifact_file"} <= set(
        wanted
    )
    blocking = public_calls(BlockingRuntime)
    missing = set(wanted) - STARTED_BY_THE_CONSTRUCTOR - set(blocking)
    assert not missing, f"BlockingRuntime lacks {sorted(missing)}"
    for name in set(wanted) - STARTED_BY_THE_CONSTRUCTOR:
        theirs = [(p.name, p.kind) for p in wanted[name].parameters.values()]
        ours = [(p.name, p.kind) for p in blocking[name].parameters.values()]
        if name == "wait":  # the one extra: how long to block
            ours = [p for p in ours if p[0] != "timeout"]
        assert ours == theirs, f"{name}: {ours} != {theirs}"


def test_blocking_runtime_runs_the_example_offline(
    tmp_path: Path, database_url: str | None
) -> None:
    repo = tmp_path / "buggy-calc"
    shutil.copytree(EXAMPLES / "buggy-calc", repo)
    model = f"replay:{EXAMPLES / 'buggy-calc.trajectory.json'}"
    with BlockingRuntime(
        Settings(database_url=database_url, data_dir=tmp_path / "data", jwt_secret="k" * 40)
    ) as runtime:
        session = runtime.create_session("demo", str(repo))
        task = runtime.create_task(session.id, "Fix the failing test", model=model)
        events = list(runtime.events(task.id))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].type == "status" and events[-1].data["status"] == "completed"
        detail = runtime.wait(task.id, timeout=30)
        assert detail.status == "completed" and detail.result is not None
        assert {a.type for a in runtime.list_artifacts(task.id)} == {"plan", "diff", "trajectory"}
        replayed = list(runtime.events(task.id, after=events[-3].seq))
        assert [e.seq for e in replayed] == [e.seq for e in events[-2:]]

        # the calls a first embedder missed: sessions, their tasks, an artifact's bytes
        assert [s.id for s in runtime.list_sessions()] == [session.id]
        assert runtime.get_session(session.id).name == "demo"
        assert [t.id for t in runtime.list_tasks(session.id)] == [task.id]
        diff = next(a for a in runtime.list_artifacts(task.id) if a.type == "diff")
        row, path = runtime.artifact_file(task.id, diff.id)
        assert row["id"] == diff.id and "calc.py" in path.read_text()
        assert runtime.owner() == runtime.owner(None) != ""
        runtime.delete_session(session.id)
        assert runtime.list_sessions() == []
        with pytest.raises(NotFound):
            runtime.get_session(session.id)
        with pytest.raises(NotFound):
            runtime.list_tasks(session.id)
        assert not path.exists()
    assert "return sum(values) / len(values)" in (repo / "calc.py").read_text()


EMBEDDING_PROGRAM = """
import asyncio, logging, sys
from pathlib import Path

import structlog

from minidevin import Runtime, Settings

mode, data, repo, model = sys.argv[1:]
if mode == "logging":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
if mode == "structlog":
    structlog.configure(
        processors=[lambda _l, _m, event: "OWN " + event["event"]],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


async def main() -> None:
    async with Runtime(Settings(data_dir=Path(data), jwt_secret="k" * 40)) as runtime:
        session = await runtime.create_session("demo", repo)
        task = await runtime.create_task(session.id, "Fix the failing test", model=model)
        assert (await runtime.wait(task.id)).status == "completed"
        structlog.get_logger("minidevin.probe").warning("probe", api_key="sk-SECRET-value")


asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["nothing", "logging", "structlog"])
def test_an_embedded_runtime_never_writes_to_stdout(mode: str, tmp_path: Path) -> None:
    repo = tmp_path / "buggy-calc"
    shutil.copytree(EXAMPLES / "buggy-calc", repo)
    model = f"replay:{EXAMPLES / 'buggy-calc.trajectory.json'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIDEVIN_")}
    done = subprocess.run(
        [sys.executable, "-c", EMBEDDING_PROGRAM, mode, str(tmp_path / "data"), str(repo), model],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "return sum(values) / len(values)" in (repo / "calc.py").read_text()
    if mode == "nothing":  # no logging set up: warnings reach stderr, info stays quiet
        assert "probe api_key=[redacted]" in done.stderr and "runtime_started" not in done.stderr
    if mode == "logging":  # the program's `logging` setup shows minidevin's events
        assert "minidevin.api: runtime_started" in done.stderr
        assert "minidevin.probe: probe api_key=[redacted]" in done.stderr
    if mode == "structlog":  # the program's own structlog configuration is left alone
        assert "OWN runtime_started" in done.stderr and "OWN probe" in done.stderr
    assert "sk-SECRET-value" not in done.stderr
