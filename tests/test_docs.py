"""README keeps up with the code: every setting documented, the two commands present,
and CI runs the test command exactly as README gives it."""

from __future__ import annotations

from pathlib import Path

from minidevin.runtime.settings import settings_table

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [name for name, _, _ in settings_table() if f"`{name}`" not in README]
    assert not missing, f"README does not document {missing}"


def test_the_two_commands_are_marked_for_ci() -> None:
    for marker, command in (
        ("<!-- serve-command -->", "minidevin serve"),
        ("<!-- test-command -->", "pip install -e '.[test]'"),
    ):
        block = README.split(marker, 1)[1].split("```", 2)[1]
        assert command in block, marker


def test_ci_runs_the_readme_test_command() -> None:
    block = README.split("<!-- test-command -->", 1)[1].split("```", 2)[1]
    command = block.removeprefix("sh").strip()
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text().splitlines()
    assert command in ci, ".ci/run must run README's test command as written"
