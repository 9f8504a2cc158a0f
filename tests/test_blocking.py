"""The blocking embedding API: plain calls and an ordinary iterator, no event loop in sight."""

from __future__ import annotations

import shutil
from pathlib import Path

from minidevin import BlockingRuntime, Settings

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_blocking_runtime_runs_the_example_offline(tmp_path: Path) -> None:
    repo = tmp_path / "buggy-calc"
    shutil.copytree(EXAMPLES / "buggy-calc", repo)
    model = f"replay:{EXAMPLES / 'buggy-calc.trajectory.json'}"
    with BlockingRuntime(Settings(data_dir=tmp_path / "data", jwt_secret="k" * 40)) as runtime:
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
    assert "return sum(values) / len(values)" in (repo / "calc.py").read_text()
