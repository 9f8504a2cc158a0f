"""`ReplayModel`: replays the assistant turns of a recorded trajectory, offline.

Model id `replay:PATH`, where PATH is a `trajectory.json` artifact (an object
with `messages`) or a plain JSON list of messages, both in the OpenAI Chat
Completions format. Each `stream_turn` returns the next recorded assistant
message: its text streamed word by word, its tool calls with their recorded
ids, names and arguments, zero usage. The conversation it is given is not
consulted, so a replay repeats the recorded actions whatever their results.

Errors: `REPLAY_INVALID` (the file is missing, unreadable or malformed) and
`REPLAY_EXHAUSTED` (the model was asked for more turns than were recorded).

Over the API (`ProviderRegistry.restrict_replay`), recordings come only from
one directory: `read_beneath` opens them without following any link, takes
regular files of at most `MAX_REPLAY_BYTES` only, and every refusal is one
`REPLAY_REFUSED` message, so a client learns nothing about the host's files.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.providers.base import (
    CONTINUE_MESSAGE,
    ModelTurn,
    ProviderError,
    TokenSink,
    ToolCall,
    Usage,
)

PREFIX = "replay:"
MAX_REPLAY_BYTES = 10 * 1024 * 1024
REFUSED = (
    "replay: this recording is not available; over the API replay: reads only regular "
    "trajectory files of at most 10 MB inside the server's MINIDEVIN_REPLAY_DIR"
)


def replay_path(model_id: str) -> str:
    """The PATH of a `replay:PATH` model id ('' when it has none)."""
    return model_id[len(PREFIX) :].strip() if model_id.startswith(PREFIX) else ""


def split_words(text: str) -> list[str]:
    """Word-sized pieces (each with its leading whitespace) that join back to `text`."""
    return re.findall(r"\s*\S+|\s+", text)


class ReplayModel:
    """A `Model` that answers with the assistant turns of a recording, in order."""

    def __init__(self, model_id: str, turns: list[ModelTurn]) -> None:
        self.model_id = model_id
        self.turns = tuple(turns)
        self._next = 0
        self._lock = threading.Lock()

    @classmethod
    def from_bytes(cls, data: bytes, model_id: str) -> ReplayModel:
        """A recording's bytes; `ProviderError("REPLAY_INVALID")` if they cannot be used."""
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise _invalid(model_id, f"not valid JSON ({exc})") from None
        return cls(model_id, turns_from_recording(parsed, model_id))

    @classmethod
    def from_file(cls, path: str | Path, model_id: str | None = None) -> ReplayModel:
        """Load a recording; `ProviderError("REPLAY_INVALID")` if it cannot be used."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _invalid(path, "the file does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _invalid(path, f"cannot read it ({exc})") from None
        except json.JSONDecodeError as exc:
            raise _invalid(path, f"not valid JSON ({exc})") from None
        return cls(model_id or f"{PREFIX}{path}", turns_from_recording(data, path))

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self.turns) - self._next

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        cancel.raise_if_set()
        with self._lock:
            if self._next >= len(self.turns):
                raise ProviderError(
                    "REPLAY_EXHAUSTED",
                    f"the recording has no turn left: all {len(self.turns)} recorded "
                    "assistant turns were replayed",
                )
            turn = self.turns[self._next]
            self._next += 1
        for piece in split_words(turn.text):
            cancel.raise_if_set()
            on_token(piece)
        cancel.raise_if_set()
        return turn


def open_beneath(directory: Path, path: str) -> int:
    """A read-only fd of the regular file `path` (absolute or relative) inside `directory`.

    Every component is opened relative to the previous one with `O_NOFOLLOW`,
    so no link (swapped in at any time) leads out; FIFOs and devices are never
    read (`O_NONBLOCK`, then `fstat`). `OSError` or `ValueError` for any refusal.
    """
    target = Path(os.path.normpath(os.path.join(directory, path)))
    parts = target.relative_to(directory).parts  # ValueError: outside
    if not parts:
        raise ValueError("not a file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
    finally:
        os.close(fd)
    info = os.fstat(file_fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_REPLAY_BYTES:
        os.close(file_fd)
        raise ValueError("not a regular file of at most 10 MB")
    return file_fd


def read_beneath(directory: Path, path: str) -> bytes:
    """The bytes of `open_beneath(directory, path)`, at most `MAX_REPLAY_BYTES`."""
    with os.fdopen(open_beneath(directory, path), "rb") as handle:
        data = handle.read(MAX_REPLAY_BYTES + 1)
    if len(data) > MAX_REPLAY_BYTES:  # (it grew since fstat)
        raise ValueError("larger than 10 MB")
    return data


def turns_from_recording(data: Any, path: str | Path = "recording") -> list[ModelTurn]:
    """The assistant turns of a trajectory object or message list; REPLAY_INVALID otherwise."""
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise _invalid(path, "expected a trajectory object with 'messages' or a list of messages")
    turns: list[ModelTurn] = []
    calls = 0
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _invalid(path, f"message {number} is not an object with a 'role'")
        if message["role"] != "assistant":
            continue
        tool_calls = []
        for raw in message.get("tool_calls") or []:
            calls += 1
            tool_calls.append(_tool_call(raw, f"call_{calls}", path, number))
        turns.append(
            ModelTurn(
                text=_text(message.get("content"), path, number),
                tool_calls=tuple(tool_calls),
                usage=Usage(),
                finish_reason=_finish_reason(messages, number, bool(tool_calls)),
            )
        )
    if not turns:
        raise _invalid(path, "it contains no assistant messages to replay")
    return turns


def _finish_reason(messages: list[Any], number: int, calls: bool) -> str:
    """`length` for a turn the output limit cut off (the loop's `CONTINUE_MESSAGE` follows
    it, after its tool results), so a replay continues it as the recorded run did."""
    following = (
        m for m in messages[number:] if not (isinstance(m, dict) and m.get("role") == "tool")
    )
    if next(following, None) == {"role": "user", "content": CONTINUE_MESSAGE}:
        return "length"
    return "tool_calls" if calls else "stop"


def _text(content: Any, path: str | Path, number: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    raise _invalid(path, f"message {number} has a 'content' that is not text")


def _tool_call(raw: Any, default_id: str, path: str | Path, number: int) -> ToolCall:
    function = raw.get("function") if isinstance(raw, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise _invalid(path, f"message {number} has a tool call without a function name")
    assert isinstance(function, dict)
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = default_id
    return ToolCall(call_id, name, arguments)


def _invalid(path: str | Path, reason: str) -> ProviderError:
    return ProviderError("REPLAY_INVALID", f"cannot replay {path}: {reason}")
