"""The model side of the agent loop: one streamed turn in, one `ModelTurn` out.

Conversations are kept in the OpenAI Chat Completions message format
(`system`, `user`, `assistant` with `tool_calls`, `tool`): it is the trajectory
we store, and providers with another wire format translate at their edge.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
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
    estimated: bool = False  # counted by us (`estimate_usage`): the provider reported none


CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text and code


def estimate_usage(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], output: str
) -> Usage:
    """A turn's tokens, approximately, for a server that streams no usage (llama.cpp, vLLM
    without `stream_options`): about 4 characters a token of what was sent and received."""
    sent = len(json.dumps(messages, ensure_ascii=False)) + len(json.dumps(tools))
    return Usage(
        prompt_tokens=-(-sent // CHARS_PER_TOKEN),
        completion_tokens=-(-len(output) // CHARS_PER_TOKEN),
        estimated=True,
    )


# Why a turn ended when the output-token limit cut it: OpenAI's and Anthropic's names.
TRUNCATED_REASONS = frozenset({"length", "max_tokens"})
# The user message the agent loop sends after such a turn (a recording shows the cut by it).
CONTINUE_MESSAGE = "Your last reply was cut off by the output limit; continue where you stopped."


@dataclass(frozen=True)
class ModelTurn:
    """One finished model turn.

    `finish_reason` is the provider's own word for why it ended (`stop`,
    `tool_calls`, `end_turn`, `tool_use`, ...); `truncated` says the output-token
    limit cut it (`length`, `max_tokens`): its text is not a final answer and
    its last tool call's arguments may be incomplete.
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason in TRUNCATED_REASONS

    def as_message(self) -> dict[str, Any]:
        """The assistant message this turn adds to the conversation.

        Without tool calls the content is a string, even an empty one (a cut-off
        turn may be empty): Chat Completions refuses a null content there.
        """
        content = self.text or (None if self.tool_calls else "")
        message: dict[str, Any] = {"role": "assistant", "content": content}
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
    PROVIDER_NOT_CONFIGURED, PROVIDER_ERROR; REPLAY_INVALID and REPLAY_EXHAUSTED
    for `replay:` models. The first three retryable ones may
    carry the server's `Retry-After` in seconds.
    """

    RETRYABLE = frozenset({"PROVIDER_RATE_LIMITED", "PROVIDER_TIMEOUT", "PROVIDER_UNAVAILABLE"})

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.code in self.RETRYABLE


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return max(0.0, float(milliseconds) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            moment = parsedate_to_datetime(value)
            return max(0.0, moment.timestamp() - time.time())
    except (TypeError, ValueError, AttributeError):
        return None


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
