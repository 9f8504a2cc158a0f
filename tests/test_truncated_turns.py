"""A turn cut off by the output-token limit is no answer: the loop asks the model to go on.

A real runtime and the real `openai` / `anthropic` SDKs against the scripted servers,
which end a turn with `finish_reason: "length"` (Anthropic: `stop_reason: "max_tokens"`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scripted_anthropic import ScriptedAnthropicServer
from scripted_provider import ScriptedOpenAIServer, ScriptedTurn

from minidevin.api import Runtime
from minidevin.runtime.agent import CONTINUE_MESSAGE
from minidevin.runtime.settings import Settings

CLAUDE = "claude-3-5-sonnet-20241022"
FINISH = ScriptedTurn(tool_calls=[("finish", {"summary": "all done", "success": True})])
CUT_CALL = '{"command": "create", "path": "big.py", "file_text": "print(\\"hel'


async def run(runtime: Runtime, workdir: Path, **fields: Any) -> tuple[list[Any], Any]:
    session = await runtime.create_session("s", workdir)
    task = await runtime.create_task(session.id, "write the answer", **fields)
    events = [event async for event in runtime.events(task.id)]
    return events, await runtime.get_task(task.id)


@pytest.fixture
async def anthropic_runtime(settings: Settings) -> AsyncIterator[tuple[Runtime, Any]]:
    async with ScriptedAnthropicServer() as server:
        env = {"ANTHROPIC_API_KEY": "sk-ant-test-123", "ANTHROPIC_BASE_URL": server.base_url}
        async with Runtime(settings, provider_env=env) as runtime:
            yield runtime, server


async def test_a_cut_off_reply_is_continued_and_only_a_real_answer_completes(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(text="The answer is forty", finish_reason="length"),
            ScriptedTurn(text="-two, as computed", finish_reason="length"),
            ScriptedTurn(text=" by the tests."),
        ]
    )
    (tmp_path / "first").mkdir()
    events, detail = await run(runtime, tmp_path / "first", model="gpt-4o")

    assert detail.status == "completed" and detail.iterations == 3
    assert detail.result is not None
    assert detail.result.summary == "The answer is forty-two, as computed by the tests."
    second, third = openai_server.requests[1]["messages"], openai_server.requests[2]["messages"]
    assert second[-2] == {"role": "assistant", "content": "The answer is forty"}
    assert second[-1] == {"role": "user", "content": CONTINUE_MESSAGE}
    assert third[-1] == {"role": "user", "content": CONTINUE_MESSAGE}
    notes = [e.data["message"] for e in events if e.type == "status"]
    assert sum("cut off" in note for note in notes) == 2

    # its trajectory replays the same way: the cut turns are continued again
    artifacts = {a.name: a for a in await runtime.list_artifacts(detail.id)}
    _, recording = await runtime.artifact_file(detail.id, artifacts["trajectory.json"].id)
    (tmp_path / "again").mkdir()
    _, replayed = await run(runtime, tmp_path / "again", model=f"replay:{recording}")
    assert replayed.status == "completed" and replayed.iterations == 3
    assert replayed.result is not None and replayed.result.summary == detail.result.summary


async def test_a_cut_off_tool_call_is_not_run_and_the_model_is_told(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        [
            ScriptedTurn(
                text="Writing it.",
                tool_calls=[
                    ("terminal", {"command": "echo ran > whole.txt"}),
                    ("editor", CUT_CALL),
                ],
                finish_reason="length",
            ),
            FINISH,
        ]
    )
    events, detail = await run(runtime, tmp_path, model="gpt-4o")

    assert detail.status == "completed" and detail.result is not None
    assert detail.result.summary == "all done"
    assert (tmp_path / "whole.txt").read_text() == "ran\n"  # the whole call ran
    assert not (tmp_path / "big.py").exists()  # the cut one did not
    results = [e.data for e in events if e.type == "tool_result"]
    assert results[1]["tool"] == "editor" and results[1]["success"] is False
    assert results[1]["output"].startswith("Not run: the output limit cut this call off")
    sent = openai_server.requests[1]["messages"]
    assert [m["role"] for m in sent[-3:]] == ["tool", "tool", "user"]
    assert sent[-2]["content"].startswith("Not run") and sent[-1]["content"] == CONTINUE_MESSAGE


async def test_cut_off_turns_never_complete_a_task_at_the_iteration_limit(
    runtime: Runtime, openai_server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script([ScriptedTurn(text=f"part {n} ", finish_reason="length") for n in (1, 2)])
    events, detail = await run(runtime, tmp_path, model="gpt-4o", max_iterations=2)
    assert detail.status == "failed" and detail.result is None
    errors = [e.data["code"] for e in events if e.type == "error"]
    assert errors == ["MAX_ITERATIONS_REACHED"]
    assert len(openai_server.requests) == 2


async def test_an_anthropic_max_tokens_reply_is_continued(
    anthropic_runtime: tuple[Runtime, ScriptedAnthropicServer], tmp_path: Path
) -> None:
    runtime, server = anthropic_runtime
    server.script(
        [
            ScriptedTurn(text="Half of the", finish_reason="max_tokens"),
            ScriptedTurn(text=" answer, then the rest."),
        ]
    )
    _, detail = await run(runtime, tmp_path, model=CLAUDE)

    assert detail.status == "completed" and detail.iterations == 2
    assert detail.result is not None
    assert detail.result.summary == "Half of the answer, then the rest."
    sent = server.requests[1]["messages"]
    assert sent[-2] == {"role": "assistant", "content": [{"type": "text", "text": "Half of the"}]}
    assert sent[-1] == {"role": "user", "content": [{"type": "text", "text": CONTINUE_MESSAGE}]}


@pytest.mark.parametrize("arguments", [CUT_CALL, ""], ids=["cut-json", "no-input-yet"])
async def test_an_anthropic_tool_use_cut_by_max_tokens_is_not_run(
    anthropic_runtime: tuple[Runtime, ScriptedAnthropicServer], tmp_path: Path, arguments: str
) -> None:
    runtime, server = anthropic_runtime
    server.script(
        [ScriptedTurn(tool_calls=[("editor", arguments)], finish_reason="max_tokens"), FINISH]
    )
    events, detail = await run(runtime, tmp_path, model=CLAUDE)

    assert detail.status == "completed" and not (tmp_path / "big.py").exists()
    result = next(e.data for e in events if e.type == "tool_result")
    assert result["success"] is False and result["output"].startswith("Not run")
    answer = server.requests[1]["messages"][-1]["content"]
    assert [block["type"] for block in answer] == ["tool_result", "text"]
    assert answer[0]["content"].startswith("Not run") and answer[1]["text"] == CONTINUE_MESSAGE
