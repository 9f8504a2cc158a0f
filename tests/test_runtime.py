"""The embedding API end to end: a real runtime, real actors, the real openai SDK."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fix_a_test import fix_a_test_turns
from scripted_provider import ScriptedOpenAIServer

from minidevin.api import Runtime

# a root-owned repository is handed to the sandbox uid when a session opens on it:
# git, run here as root, is told the repository is trusted
GIT = ["git", "-c", "safe.directory=*"]


async def test_fix_a_test_through_the_embedding_api(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, buggy_repo: Path
) -> None:
    openai_server.script(fix_a_test_turns())
    session = await runtime.create_session("bug fix", buggy_repo)
    task = await runtime.create_task(
        session.id, "Fix the failing test in test_calc.py", model="gpt-4o"
    )
    assert task.status == "running"

    events = [event async for event in runtime.events(task.id)]
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(events) + 1))
    types = [event.type for event in events]
    assert types[0:2] == ["status", "status"]
    assert "token" in types and "plan_update" in types
    assert events[-1].type == "status" and events[-1].data["status"] == "completed"
    results = [e.data for e in events if e.type == "tool_result" and e.data["tool"] == "terminal"]
    assert results[0]["success"] is False and "returned -1" in results[0]["output"]
    assert results[1]["success"] is True and "1 passed" in results[1]["output"], results[1]
    tokens = "".join(e.data["content"] for e in events if e.type == "token")
    assert tokens.startswith("Let me analyze the failing test.")

    detail = await runtime.get_task(task.id)
    assert detail.status == "completed" and detail.iterations == 3
    assert detail.result is not None and detail.result.success
    assert [s.status for s in detail.plan.steps] == ["completed"] * 3
    assert detail.plan.steps[0].id == "step-1"
    assert (buggy_repo / "calc.py").read_text().endswith("return a + b\n")

    artifacts = {a.name: a for a in await runtime.list_artifacts(task.id)}
    assert set(artifacts) == {"plan.json", "diff.patch", "trajectory.json"}
    _, diff_path = await runtime.artifact_file(task.id, artifacts["diff.patch"].id)
    subprocess.run([*GIT, "checkout", "--", "."], cwd=buggy_repo, check=True)
    subprocess.run([*GIT, "apply", "--check", str(diff_path)], cwd=buggy_repo, check=True)
    _, trajectory_path = await runtime.artifact_file(task.id, artifacts["trajectory.json"].id)
    trajectory = json.loads(trajectory_path.read_text())
    assert [m["role"] for m in trajectory["messages"]][:3] == ["system", "user", "assistant"]

    request = openai_server.requests[0]
    assert request["model"] == "gpt-4o"
    assert {tool["function"]["name"] for tool in request["tools"]} == {
        "terminal",
        "editor",
        "plan",
        "ask_user",
        "finish",
    }


async def test_a_task_on_a_server_without_usage_reports_estimated_tokens(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    from scripted_provider import ScriptedTurn

    openai_server.script([ScriptedTurn(text="done " * 50, no_usage=True)])
    (tmp_path / "w").mkdir()
    session = await runtime.create_session("s", tmp_path / "w")
    task = await runtime.create_task(session.id, "say done", model="gpt-4o")
    detail = await runtime.wait(task.id)
    assert detail.usage.estimated and detail.usage.completion_tokens == 63  # 250 chars / 4
    assert detail.usage.prompt_tokens > 0 and detail.usage.cost_usd > 0
