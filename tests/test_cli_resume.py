"""`minidevin run --resume TASK_ID` as a real subprocess, with a scripted model."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn
from test_cli_run import EXAMPLE, TASK, command, run_cli

from minidevin.runtime.task_history import INTERRUPTED_OUTPUT

CONTINUE = "Now write the answer into answer.txt."


def resume(data: Path, task_id: str, *extra: str) -> list[str]:
    run = [sys.executable, "-m", "minidevin.cli", "run", "--resume", task_id]
    return [*run, "--data-dir", str(data), *extra]


def resume_line(stdout: str) -> str:
    found = re.findall(r"^Continue it: minidevin run --resume (\S+)$", stdout, re.M)
    assert len(found) == 1, stdout
    return found[0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "buggy-calc"))


@pytest.fixture
def server() -> Any:
    with ScriptedOpenAIServer() as scripted:
        yield scripted


def env_for(server: ScriptedOpenAIServer) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-key-123", "OPENAI_BASE_URL": server.base_url}


def test_a_task_that_hit_its_iteration_limit_is_resumed_and_completes(
    repo: Path, tmp_path: Path, server: ScriptedOpenAIServer
) -> None:
    data, env = tmp_path / "data", env_for(server)
    server.script(
        [ScriptedTurn(text="Looking first.", tool_calls=[("terminal", {"command": "echo 42"})])]
    )
    first = run_cli(command(repo, data, "gpt-4o", "--max-iterations", "1"), env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "error MAX_ITERATIONS_REACHED" in first.stdout and "Task failed" in first.stdout
    task_id = resume_line(first.stdout)

    create = {"command": "create", "path": "answer.txt", "file_text": "42\n"}
    finish = {"summary": "Wrote 42", "success": True}
    server.script(
        [
            ScriptedTurn(tool_calls=[("editor", create)]),
            ScriptedTurn(tool_calls=[("finish", finish)]),
        ]
    )
    argv = resume(data, task_id, "--message", CONTINUE, "--max-iterations", "2", "--json")
    second = run_cli(argv, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    events = [json.loads(line) for line in second.stdout.splitlines()]
    seqs = [e["seq"] for e in events]
    assert seqs[0] > 1 and seqs == list(range(seqs[0], seqs[0] + len(events)))  # it goes on
    assert {e["task_id"] for e in events} == {task_id}
    resumed = next(e for e in events if e["type"] == "resumed")
    assert resumed["message"] == CONTINUE and resumed["max_iterations"] == 3
    assert events[-1]["type"] == "status" and events[-1]["status"] == "completed"
    assert (repo / "answer.txt").read_text() == "42\n"

    # the first request after the resume holds the whole earlier conversation, then the message
    assert len(server.requests) == 3
    messages = server.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[1]["content"] == TASK
    assert messages[2]["content"] == "Looking first."
    call = messages[2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"command": "echo 42"}
    assert messages[3]["tool_call_id"] == call["id"] and "42" in messages[3]["content"]
    assert INTERRUPTED_OUTPUT not in messages[3]["content"]
    assert messages[4] == {"role": "user", "content": CONTINUE}

    # a completed task is not resumed: one line, nothing run
    again = run_cli(resume(data, task_id), env=env)
    assert again.returncode == 2 and not again.stdout
    assert again.stderr.strip().splitlines() == [
        "minidevin: the task completed; continue it with a follow-up task in its session"
    ]
    assert len(server.requests) == 3


def test_the_human_view_of_a_resumed_run(
    repo: Path, tmp_path: Path, server: ScriptedOpenAIServer
) -> None:
    data, env = tmp_path / "data", env_for(server)
    server.script([ScriptedTurn(tool_calls=[("terminal", {"command": "echo first"})])])
    first = run_cli(command(repo, data, "gpt-4o", "--max-iterations", "1"), env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    task_id = resume_line(first.stdout)

    server.script([ScriptedTurn(tool_calls=[("finish", {"summary": "Done now", "success": True})])])
    done = run_cli(resume(data, task_id, "--message", "Finish up."), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[resumed] up to 2 iterations in all\n> Finish up.\n" in out
    assert "$ echo first" not in out  # only what the resumed run adds is shown
    assert "Task completed (success): Done now" in out and "2 iteration(s)" in out
    assert "Continue it:" not in out


def test_unknown_task_and_wrong_arguments_are_one_line(tmp_path: Path, repo: Path) -> None:
    done = run_cli(resume(tmp_path / "data", "no-such-task"))
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.strip().splitlines() == ["minidevin: task not found"]

    for extra in (["Fix it"], ["--dir", str(repo)], ["--model", "gpt-4o"]):
        done = run_cli([*resume(tmp_path / "data", "some-id"), *extra])
        assert done.returncode == 2 and "--resume continues a task as it was" in done.stderr
    done = run_cli(command(repo, tmp_path / "data", "gpt-4o", "--message", "hi"))
    assert done.returncode == 2 and "--message goes with --resume" in done.stderr
    done = run_cli([sys.executable, "-m", "minidevin.cli", "run", "--dir", str(repo)])
    assert done.returncode == 2 and "a task description and --dir are required" in done.stderr


def test_run_help_documents_resume() -> None:
    done = run_cli([sys.executable, "-m", "minidevin.cli", "run", "--help"])
    shown = " ".join(done.stdout.split())
    assert "--resume TASK_ID continue a failed or stopped task" in shown
    assert "--message MESSAGE with --resume" in shown and "--max-cost-usd" in shown
