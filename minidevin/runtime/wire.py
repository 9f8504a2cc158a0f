"""No WebSocket message over 1 MiB: an event too large for that is sent with its longest
strings cut.

Token deltas are already split (`providers/streaming.split_delta`), but a
`model_turn` repeats a whole turn (up to `MINIDEVIN_MAX_TURN_OUTPUT_BYTES` of
text and tool arguments) and a `tool_call` a whole input (a file the editor
writes). Such an event is stored whole (the conversation is rebuilt from it);
only its WebSocket message is cut: the longest strings lose their middle, each
marked with how much was cut, and the message says `"cut": true`. The text
itself reached the client already (as `token` events), and the task's
`trajectory.json` keeps everything.
"""

from __future__ import annotations

import json
from typing import Any

MAX_MESSAGE_BYTES = 1024 * 1024
_SLACK = 4096  # room for the markers and the `cut` flag


def dumps(message: dict[str, Any], limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` as JSON text of at most `limit` bytes (ASCII: bytes are characters)."""
    text = json.dumps(message)
    if len(text) <= limit:
        return text
    trimmed = _cut(message, len(text) - limit + _SLACK)
    trimmed["cut"] = True
    return json.dumps(trimmed)


def _cut(value: Any, excess: int) -> Any:
    """A copy of `value` whose strings are `excess` characters (of JSON text) shorter,
    taken from the longest first."""
    leaves: list[tuple[int, tuple[Any, ...]]] = []
    copy = _copy(value, (), leaves)
    leaves.sort(key=lambda leaf: leaf[0], reverse=True)
    for size, path in leaves:
        if excess <= 0:
            break
        text = _get(copy, path)
        keep = max(0, len(text) - excess - 100) // 2
        marker = f" [... {len(text) - 2 * keep} characters cut from this message ...] "
        _set(copy, path, text[:keep] + marker + text[len(text) - keep :])
        excess -= size - len(json.dumps(_get(copy, path)))
    return copy


def _copy(value: Any, path: tuple[Any, ...], leaves: list[tuple[int, tuple[Any, ...]]]) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item, (*path, key), leaves) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item, (*path, index), leaves) for index, item in enumerate(value)]
    if isinstance(value, str) and len(value) > 1024:
        leaves.append((len(json.dumps(value)), path))
    return value


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _set(value: Any, path: tuple[Any, ...], new: Any) -> None:
    _get(value, path[:-1])[path[-1]] = new
