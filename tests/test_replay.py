"""`replay:PATH`: the ReplayModel alone, through the registry, and a task run offline."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from minidevin.api import Runtime
from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.errors import ValidationFailed
from minidevin.runtime.providers.base import ProviderError
from minidevin.runtime.providers.registry import PROVIDERS, ProviderRegistry, UnknownModel
from minidevin.runtime.providers.replay import ReplayModel
from minidevin.runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "buggy-calc"
TRAJECTORY = ROOT / "examples" / "buggy-calc.trajectory.json"


def assistant(text: str | None, *calls: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"rec_{name}_{n}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            for n, (name, arguments) in enumerate(calls)
        ]
    return message


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def stream(model: ReplayModel, cancel: CancelToken | None = None) -> tuple[Any, list[str]]:
    pieces: list[str] = []
    turn = model.stream_turn([], [], pieces.append, cancel or CancelToken())
    return turn, pieces


# -- the model ------------------------------------------------------------------------


def test_replays_the_recorded_assistant_turns_in_order(tmp_path: Path) -> None:
    model = ReplayModel.from_file(TRAJECTORY)
    recorded = [
        m for m in json.loads(TRAJECTORY.read_text())["messages"] if m["role"] == "assistant"
    ]
    assert model.remaining == len(recorded) == 3
    for message in recorded:
        turn, pieces = stream(model)
        assert len(pieces) > 1 and "".join(pieces) == message["content"] == turn.text
        assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
            (c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in message["tool_calls"]
        ]
        assert turn.usage.prompt_tokens == turn.usage.completion_tokens == 0
        assert turn.finish_reason == "tool_calls"
        assert turn.as_message() == message
    with pytest.raises(ProviderError) as exhausted:
        stream(model)
    assert exhausted.value.code == "REPLAY_EXHAUSTED" and "3" in exhausted.value.message


def test_a_plain_message_list_and_lenient_shapes(tmp_path: Path) -> None:
    raw_call = {"type": "function", "function": {"name": "plan", "arguments": {"steps": ["a"]}}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [raw_call]},
        {"role": "tool", "tool_call_id": "x", "content": "ok"},
        {"role": "assistant", "content": [{"type": "text", "text": "All done."}]},
    ]
    model = ReplayModel.from_file(write(tmp_path / "list.json", messages))
    turn, pieces = stream(model)
    assert turn.text == "" and pieces == []
    assert turn.tool_calls[0].id == "call_1"  # no recorded id: one is made up
    assert json.loads(turn.tool_calls[0].arguments) == {"steps": ["a"]}
    turn, pieces = stream(model)
    assert (turn.text, pieces, turn.tool_calls, turn.finish_reason) == (
        "All done.",
        ["All", " done."],
        (),
        "stop",
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"messages": 3}', "expected a trajectory object"),
        ('"just a string"', "expected a trajectory object"),
        ('[{"role": "user", "content": "x"}]', "no assistant messages"),
        ('[{"content": "x"}]', "message 1 is not an object with a 'role'"),
        ('[{"role": "assistant", "tool_calls": [{"function": {}}]}]', "without a function name"),
        ('[{"role": "assistant", "content": 5}]', "not text"),
    ],
)
def test_an_unusable_file_is_replay_invalid(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "recording.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ProviderError) as invalid:
        ReplayModel.from_file(path)
    assert invalid.value.code == "REPLAY_INVALID"
    assert reason in invalid.value.message and str(path) in invalid.value.message


def test_an_unreadable_file_is_replay_invalid(tmp_path: Path) -> None:
    with pytest.raises(ProviderError) as invalid:
        ReplayModel.from_file(tmp_path)  # a directory
    assert invalid.value.code == "REPLAY_INVALID" and "cannot read" in invalid.value.message


def test_cancel_before_and_during_a_turn(tmp_path: Path) -> None:
    model = ReplayModel.from_file(TRAJECTORY)
    cancelled = CancelToken()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        stream(model, cancelled)
    assert model.remaining == 3  # a cancelled call consumed nothing

    cancel = CancelToken()
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        pieces.append(piece)
        cancel.cancel()

    with pytest.raises(Cancelled):
        model.stream_turn([], [], on_token, cancel)
    assert len(pieces) == 1


# -- the registry ---------------------------------------------------------------------


def test_resolve_makes_the_path_absolute_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    registry = ProviderRegistry({})
    info = registry.resolve("replay:runs/trajectory.json")
    assert info.provider == "replay" and "replay" not in PROVIDERS
    assert info.id == f"replay:{tmp_path / 'runs' / 'trajectory.json'}"
    assert registry.resolve(info.id) == info
    assert all(m.provider != "replay" for m in registry.models())
    for empty in ("replay:", "replay:   "):
        with pytest.raises(UnknownModel):
            registry.resolve(empty)


def test_create_builds_a_replay_model_without_credentials(tmp_path: Path) -> None:
    registry = ProviderRegistry({})
    model = registry.create(f"replay:{TRAJECTORY}")
    assert isinstance(model, ReplayModel) and model.model_id == f"replay:{TRAJECTORY}"
    with pytest.raises(ProviderError) as invalid:
        registry.create(f"replay:{tmp_path / 'missing.json'}")
    assert invalid.value.code == "REPLAY_INVALID"


# -- a task through the Runtime -------------------------------------------------------


@pytest.fixture
async def offline_runtime(settings: Settings) -> Any:
    async with Runtime(settings, provider_env={}) as runtime:
        yield runtime


async def run_task(runtime: Runtime, directory: Path, model: str) -> tuple[Any, list[Any]]:
    session = await runtime.create_session("replay", directory)
    task = await runtime.create_task(
        session.id, "Fix the failing test in test_calc.py", model=model
    )
    events = [event async for event in runtime.events(task.id)]
    return await runtime.get_task(task.id), events


async def test_the_example_trajectory_fixes_a_copy_of_the_example(
    offline_runtime: Runtime, tmp_path: Path
) -> None:
    repo = shutil.copytree(EXAMPLE, tmp_path / "buggy-calc")
    assert subprocess.run(["python3", "test_calc.py"], cwd=repo, check=False).returncode == 1
    detail, events = await run_task(offline_runtime, repo, f"replay:{TRAJECTORY}")

    assert detail.status == "completed" and detail.result and detail.result.success
    assert detail.iterations == 3 and detail.usage.prompt_tokens == 0
    assert "return sum(values) / len(values)" in (repo / "calc.py").read_text()
    assert subprocess.run(["python3", "test_calc.py"], cwd=repo, check=False).returncode == 0
    results = [e.data for e in events if e.type == "tool_result" and e.data["tool"] == "terminal"]
    assert [r["success"] for r in results] == [False, True]

    artifacts = {a.name: a for a in await offline_runtime.list_artifacts(detail.id)}
    _, diff = await offline_runtime.artifact_file(detail.id, artifacts["diff.patch"].id)
    assert diff.read_text().startswith("diff --git a/calc.py b/calc.py")
    assert diff.read_text().count("diff --git") == 1
    _, trajectory = await offline_runtime.artifact_file(detail.id, artifacts["trajectory.json"].id)
    replayed = json.loads(trajectory.read_text())["messages"]
    recorded = json.loads(TRAJECTORY.read_text())["messages"]
    assert [m for m in replayed if m["role"] == "assistant"] == [
        m for m in recorded if m["role"] == "assistant"
    ]
    assert len(replayed) == len(recorded)


async def test_a_bad_recording_fails_the_task_with_its_code(
    offline_runtime: Runtime, tmp_path: Path
) -> None:
    repo = shutil.copytree(EXAMPLE, tmp_path / "buggy-calc")
    detail, events = await run_task(offline_runtime, repo, f"replay:{tmp_path / 'nope.json'}")
    assert detail.status == "failed"
    assert [e.data["code"] for e in events if e.type == "error"] == ["REPLAY_INVALID"]

    short = write(tmp_path / "short.json", [assistant("Look.", ("terminal", {"command": "ls"}))])
    detail, events = await run_task(offline_runtime, repo, f"replay:{short}")
    assert detail.status == "failed" and detail.iterations == 1
    assert [e.data["code"] for e in events if e.type == "error"] == ["REPLAY_EXHAUSTED"]

    with pytest.raises(ValidationFailed):
        await run_task(offline_runtime, repo, "replay:")
