"""A task never ends `completed` without the artifacts it promised: one it cannot write
is named in an `error` `ARTIFACTS_FAILED`, and the task fails instead."""

from __future__ import annotations

import shutil
from pathlib import Path

from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish

from minidevin.api import Runtime


async def test_a_task_whose_artifacts_cannot_be_written_fails_and_says_which(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("before\n")
    openai_server.script(
        [
            ScriptedTurn(
                tool_calls=[
                    ("editor", {"command": "create", "path": "new.txt", "file_text": "x\n"})
                ]
            ),
            finish("all done"),
        ]
    )
    artifacts = runtime.settings.artifacts_dir
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.write_text("a file where the artifacts directory should be\n")  # even root fails

    session = await runtime.create_session("s", tmp_path)
    task = await runtime.create_task(session.id, "make a file")
    detail = await runtime.wait(task.id)
    events = [event async for event in runtime.events(task.id)]

    assert detail.status == "failed"
    assert detail.result is not None and detail.result.summary == "all done"
    errors = [e.data for e in events if e.type == "error"]
    assert [e["code"] for e in errors] == ["ARTIFACTS_FAILED"]
    for name in ("plan.json", "diff.patch", "trajectory.json"):
        assert name in errors[0]["error"]
    assert events[-1].data["status"] == "failed"
    assert await runtime.list_artifacts(task.id) == []
