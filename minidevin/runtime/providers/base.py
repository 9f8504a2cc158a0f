"""The model side of the agent loop: one streamed turn in, one `ModelTurn` out.

Conversations are kept in the OpenAI Chat Completions message format
(`system`, `user`, `assistant` with `tool_calls`, `tool`): it is the trajectory
we store, and providers with another wire format translate at their edge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from minidevin.runtime.cancel import CancelToken


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the model asked for it; `arguments` is the raw JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ModelTurn:
    """One finished model turn."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None

    def as_message(self) -> dict[str, Any]:
        """The assistant message this turn adds to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


class ProviderError(Exception):
    """A model call that failed for good; `code` names the cause for the client.

    Codes: PROVIDER_AUTH_FAILED, PROVIDER_RATE_LIMITED, PROVIDER_TIMEOUT,
    PROVIDER_UNAVAILABLE, PROVIDER_BAD_REQUEST, CONTEXT_LENGTH_EXCEEDED,
    PROVIDER_ERROR.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


TokenSink = Callable[[str], None]


class Model(Protocol):
    """Streams one turn. Calls `on_token` with each text delta as it arrives.

    Blocking: runs on a ModelActor's thread. Checks `cancel` between chunks
    (and may register a callback that closes the stream) and raises
    `minidevin.runtime.cancel.Cancelled` when it is set. Raises `ProviderError`
    for failures.
    """

    model_id: str

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn: ...
