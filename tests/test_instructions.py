"""AGENTS.md reaches the system prompt: a real runtime, the real openai SDK, a scripted server.

What the model sees is read from the scripted server's record of the first request.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.runtime.instructions import HEADING, MAX_INSTRUCTIONS_BYTES


def git_repository(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


async def first_prompt(
    runtime: Runtime, server: ScriptedOpenAIServer, workdir: Path
) -> tuple[str, dict[str, Any]]:
    """(the system prompt of the task's first model request, its trajectory.json)."""
    server.script([ScriptedTurn(text="Done.")])
    session = await runtime.create_session("s", workdir)
    task = await runtime.create_task(session.id, "do it", model="gpt-4o")
    events = [event async for event in runtime.events(task.id)]
    assert events[-1].data["status"] == "completed", events[-1]
    artifacts = {a.name: a for a in await runtime.list_artifacts(task.id)}
    _, path = await runtime.artifact_file(task.id, artifacts["trajectory.json"].id)
    system = server.requests[0]["messages"][0]
    assert system["role"] == "system"
    return system["content"], json.loads(path.read_text())


async def test_agents_md_files_from_the_repository_root_down_reach_the_prompt(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "AGENTS.md").write_text("ABOVE-THE-REPOSITORY: never read\n")
    repo = git_repository(tmp_path / "repo")
    (repo / "AGENTS.md").write_text("ROOT-RULE: run `make test` before finishing.\n")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "AGENTS.md").write_text("PKG-RULE: type hints everywhere.\n")
    workdir = repo / "pkg" / "app"
    workdir.mkdir()
    (workdir / "AGENTS.md").write_text("APP-RULE: no new dependencies.\n")

    prompt, trajectory = await first_prompt(runtime, openai_server, workdir)

    assert prompt.startswith("You are minidevin")
    assert HEADING in prompt
    positions = [prompt.index(rule) for rule in ("ROOT-RULE", "PKG-RULE", "APP-RULE")]
    assert positions == sorted(positions) and prompt.index(HEADING) < positions[0]
    assert f"## {repo}/AGENTS.md" in prompt and f"## {workdir}/AGENTS.md" in prompt
    assert "ABOVE-THE-REPOSITORY" not in prompt  # never above the repository's root
    assert "Cut here" not in prompt and "Left out" not in prompt
    used = trajectory["instructions"]
    assert [entry["path"] for entry in used] == [
        f"{repo}/AGENTS.md",
        f"{repo}/pkg/AGENTS.md",
        f"{workdir}/AGENTS.md",
    ]
    assert not any(entry["cut"] for entry in used)
    assert trajectory["messages"][0]["content"] == prompt  # the trajectory holds what was sent


async def test_outside_a_repository_only_the_working_directory_file_counts(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "AGENTS.md").write_text("PARENT-RULE\n")
    workdir = tmp_path / "plain"
    workdir.mkdir()
    (workdir / "AGENTS.md").write_text("OWN-RULE\n")
    prompt, trajectory = await first_prompt(runtime, openai_server, workdir)
    assert "OWN-RULE" in prompt and "PARENT-RULE" not in prompt
    assert [entry["path"] for entry in trajectory["instructions"]] == [f"{workdir}/AGENTS.md"]


async def test_no_agents_md_leaves_the_prompt_as_it_was(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    workdir = git_repository(tmp_path / "repo")
    prompt, trajectory = await first_prompt(runtime, openai_server, workdir)
    assert HEADING not in prompt and trajectory["instructions"] == []


async def test_linked_agents_md_files_are_not_followed(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)  # (relative links resolve for the uid commands run as)
    (tmp_path / "secret.txt").write_text("OUTSIDE-SECRET\n")
    repo = git_repository(tmp_path / "repo")
    (repo / "AGENTS.md").symlink_to("../secret.txt")  # at the repository's root, to outside
    (repo / "real.md").write_text("INSIDE-BUT-LINKED\n")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "AGENTS.md").symlink_to("../real.md")  # between, pointing inside
    workdir = repo / "pkg" / "app"
    workdir.mkdir()
    (workdir / "AGENTS.md").symlink_to("../../../secret.txt")  # in the working directory
    prompt, trajectory = await first_prompt(runtime, openai_server, workdir)
    assert "OUTSIDE-SECRET" not in prompt and "INSIDE-BUT-LINKED" not in prompt
    assert HEADING not in prompt
    assert trajectory["instructions"] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files read as the command uid")
async def test_a_root_only_file_hard_linked_in_is_not_read(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("ROOT-ONLY-SECRET\n")
    secret.chmod(0o600)
    workdir = tmp_path / "work"
    workdir.mkdir()
    os.link(secret, workdir / "AGENTS.md")  # (left root's: it has two links)
    prompt, _ = await first_prompt(runtime, openai_server, workdir)
    assert "ROOT-ONLY-SECRET" not in prompt


async def test_the_instructions_are_capped_and_the_prompt_says_what_was_cut(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    repo = git_repository(tmp_path / "repo")
    root_text = "R" * (20 * 1024)
    (repo / "AGENTS.md").write_text(root_text)
    (repo / "pkg").mkdir()
    (repo / "pkg" / "AGENTS.md").write_text("P" * (20 * 1024))
    workdir = repo / "pkg" / "app"
    workdir.mkdir()
    (workdir / "AGENTS.md").write_text("APP-RULE\n")

    prompt, trajectory = await first_prompt(runtime, openai_server, workdir)

    assert root_text in prompt  # the root's file first, whole
    assert prompt.count("P") >= MAX_INSTRUCTIONS_BYTES - len(root_text)
    assert "P" * (MAX_INSTRUCTIONS_BYTES - len(root_text) + 1) not in prompt
    assert "Cut here" in prompt and f"({20 * 1024} bytes)" in prompt
    assert f"Left out: {workdir}/AGENTS.md" in prompt and "APP-RULE" not in prompt
    used = trajectory["instructions"]
    assert [(entry["cut"], entry["used_bytes"]) for entry in used] == [
        (False, 20 * 1024),
        (True, MAX_INSTRUCTIONS_BYTES - 20 * 1024),
        (True, 0),
    ]
    assert sum(entry["used_bytes"] for entry in used) == MAX_INSTRUCTIONS_BYTES
