"""Faults injected at the model boundary: a crash fails that task only, never the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minidevin.api import Runtime
from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.providers.base import ModelTurn, TokenSink, ToolCall
from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.settings import Settings


class CrashingModel:
    """Raises an unexpected exception mid-turn (a bug in a provider adapter)."""

    model_id = "crashing"

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        on_token("about to fail")
        raise RuntimeError("adapter bug")


class MalformedTurnModel:
    """Answers a turn whose tool call is not a ToolCall: the TaskActor itself raises."""

    model_id = "malformed"

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        return ModelTurn(text="", tool_calls=(object(),))  # type: ignore[arg-type]


class FinishingModel:
    model_id = "finishing"

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        arguments = '{"summary": "fine", "success": true}'
        return ModelTurn(text="", tool_calls=(ToolCall("call_1", "finish", arguments),))


def registry() -> ProviderRegistry:
    providers = ProviderRegistry({})
    providers.register("crashing", CrashingModel)
    providers.register("malformed", MalformedTurnModel)
    providers.register("finishing", FinishingModel)
    return providers


async def test_crashes_fail_one_task_and_the_session_goes_on(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path.with_name(tmp_path.name + "-data"),
        jwt_secret="v" * 40,
    )
    async with Runtime(settings, providers=registry()) as runtime:
        session = await runtime.create_session("s", tmp_path)
        for model, code in (("crashing", "PROVIDER_ERROR"), ("malformed", "INTERNAL_ERROR")):
            task = await runtime.create_task(session.id, "x", model=model)
            events = [event async for event in runtime.events(task.id)]
            assert events[-2].type == "error" and events[-2].data["code"] == code, events
            assert events[-1].data["status"] == "failed"
            assert "adapter bug" not in events[-2].data["error"]  # no internals leak
            artifacts = await runtime.list_artifacts(task.id)
            assert {a.type for a in artifacts} == {"plan", "diff", "trajectory"}
        healthy = await runtime.create_task(session.id, "y", model="finishing")
        detail = await runtime.wait(healthy.id)
        assert detail.status == "completed" and detail.result.summary == "fine"
