"""A session's secrets reach its commands, and nothing that leaves the runtime shows them:
events (a value split across streamed deltas included), the task row, artifacts, the
database file's bytes, log lines. Real SDK, real commands (sandboxed where it works)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from conftest import provider_env
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn, finish

from minidevin.api import Runtime
from minidevin.runtime.errors import ValidationFailed
from minidevin.runtime.redaction import Redactor
from minidevin.runtime.settings import Settings

VALUE = "open sesame 4242 xyzzy"  # spaces: the scripted stream sends it in four deltas
MARK = "<secret:DOOR_CODE>"


async def test_a_secret_is_used_by_a_command_and_shown_nowhere(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    work = tmp_path / "ws"
    work.mkdir()
    command = 'printf "%s" "$DOOR_CODE" > code.txt; cat code.txt'
    openai_server.script(
        [
            ScriptedTurn(
                text=f"I will not say {VALUE} out loud.",
                tool_calls=[("terminal", {"command": command})],
            ),
            finish(f"The code was {VALUE}."),
        ]
    )
    settings = settings.model_copy(update={"token_coalesce_ms": 0})
    async with Runtime(settings, provider_env=provider_env(openai_server)) as runtime:
        user = await runtime.owner(None)
        await runtime.secrets.put(user, "DOOR_CODE", VALUE)
        with pytest.raises(ValidationFailed):
            await runtime.create_session("s", work, secrets=["NOT_STORED"])
        session = await runtime.create_session("s", work, secrets=["DOOR_CODE"])
        task = await runtime.create_task(session.id, f"use the door code ({VALUE})")
        detail = await runtime.wait(task.id)
        events = [event async for event in runtime.events(task.id)]
        artifacts = {
            a.name: (await runtime.artifact_file(task.id, a.id))[1].read_text()
            for a in await runtime.list_artifacts(task.id)
        }
    assert detail.status == "completed"
    assert task.description == detail.description == f"use the door code ({MARK})"
    assert (work / "code.txt").read_text() == VALUE  # the command had the real value
    everything = json.dumps([e.to_message() for e in events])
    assert VALUE not in everything and "sesame" not in everything.replace(MARK, "")
    tokens = "".join(e.data["content"] for e in events if e.type == "token")
    assert tokens == f"I will not say {MARK} out loud."  # split across deltas, still masked
    output = next(e.data["output"] for e in events if e.type == "tool_result")
    assert MARK in output
    assert detail.result is not None and detail.result.summary == f"The code was {MARK}."
    assert set(artifacts) == {"plan.json", "diff.patch", "trajectory.json"}
    assert MARK in artifacts["diff.patch"] and MARK in artifacts["trajectory.json"]
    assert all(VALUE not in text for text in artifacts.values())
    stored = b"".join(path.read_bytes() for path in settings.data_dir.iterdir() if path.is_file())
    assert VALUE.encode() not in stored


def test_log_lines_mask_a_loaded_secret(caplog: pytest.LogCaptureFixture) -> None:
    Redactor({"LOG_TOKEN": "tok-5150-abcd"})
    with caplog.at_level(logging.INFO):
        structlog.get_logger("minidevin.test").info("request_failed", detail="sent tok-5150-abcd")
    assert "tok-5150-abcd" not in caplog.text and "<secret:LOG_TOKEN>" in caplog.text


def test_streamed_text_holds_back_only_what_could_begin_a_value() -> None:
    redactor = Redactor({"K": "abcdef"})
    ready, held = redactor.stream("", "xx abc")
    assert (ready, held) == ("xx ", "abc")
    ready, held = redactor.stream(held, "def yy")
    assert (ready, held) == ("<secret:K> yy", "")
    ready, held = redactor.stream("", "abx")  # not the value after all: nothing held
    assert (ready, held) == ("abx", "")


def test_escaped_and_line_by_line_forms_are_masked_too() -> None:
    value = 'pa"ss\\word\nline-two-4242'
    redactor = Redactor({"K": value})
    arguments = json.dumps({"command": f"echo {value}"})  # a tool call's arguments: escaped
    assert "pa" not in redactor.text(arguments).replace("<secret:K>", "")
    diff = "".join(f"+{line}\n" for line in value.splitlines())  # a diff: line by line
    masked = redactor.text(diff)
    assert 'pa"ss' not in masked and "line-two-4242" not in masked


def test_a_traceback_in_a_server_log_line_is_masked() -> None:
    """As `minidevin serve` logs (JSON to stderr): the value in a traceback and a list."""
    program = (
        "import structlog\n"
        "from minidevin.runtime.logging import configure_logging\n"
        "from minidevin.runtime.redaction import Redactor\n"
        "configure_logging('info', 'json')\n"
        "Redactor({'TRACE_TOKEN': 'trace-9981-secret'})\n"
        "try:\n"
        "    raise RuntimeError('failed with trace-9981-secret')\n"
        "except RuntimeError:\n"
        "    structlog.get_logger('t').exception('boom', items=['trace-9981-secret'])\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert "RuntimeError" in done.stderr and "<secret:TRACE_TOKEN>" in done.stderr
    assert "trace-9981-secret" not in done.stderr


def test_output_cut_in_two_leaves_no_part_of_a_value_at_the_cut() -> None:
    from minidevin.runtime.tools.terminal import _OutputBuffer

    value = "ABCDEFGHIJ" * 3
    redactor = Redactor({"K": value})
    output = _OutputBuffer(100, redactor)
    output.feed(("x" * 40 + value + "y" * 200).encode())  # the value straddles the head's end
    text = redactor.text(output.text())
    assert "ABCDEFGHIJ"[:4] not in text
