"""`Model` over the OpenAI Chat Completions API (or any server speaking it).

Uses the official sync `openai.OpenAI` client: `stream_turn` runs on a
ModelActor's worker thread. A turn is streamed with usage included; text
deltas go to `on_token` as they arrive and tool calls are assembled from their
deltas by `index`.

Cancellation: once the stream is open, a callback on the cancel token shuts
the underlying socket down (`streaming.abort_stream`), which wakes the worker
blocked in a read at once. The worker then closes the stream
itself and raises `Cancelled`. The token is also checked between chunks.
The wait for response headers (and the SDK's retry sleeps) cannot be
interrupted; the client's timeout bounds them.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, NoReturn

import openai
from openai.types.chat import ChatCompletionChunk

from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.providers.base import (
    ModelTurn,
    ProviderError,
    TokenSink,
    ToolCall,
    Usage,
    estimate_usage,
)
from minidevin.runtime.providers.streaming import (
    admit_output,
    check_admitted,
    consume_stream,
    provider_error,
)

_MalformedStream = json.JSONDecodeError | UnicodeDecodeError
_CONTEXT_HINTS = ("context_length", "context length", "maximum context", "too many tokens")


def openai_client(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float = 600.0,
    max_retries: int = 2,
) -> openai.OpenAI:
    """An `openai.OpenAI` client; `OPENAI_API_KEY` / `OPENAI_BASE_URL` fill the gaps."""
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ProviderError("PROVIDER_NOT_CONFIGURED", "OPENAI_API_KEY is not set")
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    return openai.OpenAI(api_key=key, base_url=url, timeout=timeout, max_retries=max_retries)


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _TurnBuilder:
    """Folds chunks into a `ModelTurn`."""

    def __init__(self, on_token: TokenSink) -> None:
        self._on_token = on_token
        self._text: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self.usage: Usage | None = None  # (None: the server streamed none)
        self.finish_reason: str | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        if chunk.usage is not None:
            self.usage = Usage(
                prompt_tokens=chunk.usage.prompt_tokens or 0,
                completion_tokens=chunk.usage.completion_tokens or 0,
            )
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                kept = admit_output(delta.content)  # (the turn's output cap)
                if kept:
                    self._text.append(kept)
                    self._on_token(kept)
                check_admitted(delta.content, kept)
            for call_delta in delta.tool_calls or ():
                call = self._calls.setdefault(call_delta.index, _PartialCall())
                if call_delta.id:
                    call.id = call_delta.id
                function = call_delta.function
                if function is not None:
                    if function.name:
                        call.name = function.name
                    if function.arguments:
                        check_admitted(function.arguments, admit_output(function.arguments))
                        call.arguments.append(function.arguments)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def build(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        if self.finish_reason is None:
            raise ProviderError(
                "PROVIDER_UNAVAILABLE", "OpenAI stream ended before the turn finished"
            )
        calls = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                raise ProviderError(
                    "PROVIDER_UNAVAILABLE", f"OpenAI stream sent tool call {index} without a name"
                )
            call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
            calls.append(ToolCall(id=call_id, name=call.name, arguments="".join(call.arguments)))
        text = "".join(self._text)
        usage = self.usage
        if usage is None:  # counted approximately, and said so
            output = text + "".join(call.name + call.arguments for call in calls)
            usage = estimate_usage(messages, tools, output)
        return ModelTurn(
            text=text, tool_calls=tuple(calls), usage=usage, finish_reason=self.finish_reason
        )


class OpenAIChatModel:
    """A `Model` that streams Chat Completions through the sync OpenAI SDK."""

    def __init__(
        self, model_id: str, client: openai.OpenAI, *, api_model: str | None = None
    ) -> None:
        self.model_id = model_id
        self.api_model = api_model or model_id
        self._client = client

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        cancel.raise_if_set()
        request: dict[str, Any] = {
            "model": self.api_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            request["tools"] = tools
        builder = _TurnBuilder(on_token)
        consume_stream(
            lambda: self._client.chat.completions.create(**request),
            builder.add,
            cancel,
            self._raise_provider_error,
        )
        return builder.build(messages, tools)

    def _raise_provider_error(self, error: Exception) -> NoReturn:
        if not isinstance(error, openai.OpenAIError | _MalformedStream):
            raise error  # not the provider's failure (e.g. raised by on_token)
        code, summary = _classify(error)
        raise provider_error(code, summary, error, self._client.api_key) from None


def _classify(error: Exception) -> tuple[str, str]:
    """(ProviderError code, summary) for an SDK error."""
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return "PROVIDER_AUTH_FAILED", "OpenAI rejected the credentials"
    if isinstance(error, openai.RateLimitError):
        return "PROVIDER_RATE_LIMITED", "OpenAI rate limit reached"
    if isinstance(error, openai.APITimeoutError):
        return "PROVIDER_TIMEOUT", "OpenAI request timed out"
    if isinstance(error, openai.APIConnectionError):
        return "PROVIDER_UNAVAILABLE", "OpenAI connection failed"
    if isinstance(error, openai.InternalServerError):
        return "PROVIDER_UNAVAILABLE", f"OpenAI server error {error.status_code}"
    if isinstance(error, openai.APIError) and _mentions_context_length(error):
        return "CONTEXT_LENGTH_EXCEEDED", "The conversation is too long for the model"
    if isinstance(
        error, openai.BadRequestError | openai.UnprocessableEntityError | openai.NotFoundError
    ):
        return "PROVIDER_BAD_REQUEST", f"OpenAI refused the request ({error.status_code})"
    if isinstance(error, _MalformedStream):  # an SSE event that is not JSON / UTF-8
        return "PROVIDER_UNAVAILABLE", "OpenAI stream was malformed"
    if isinstance(error, openai.APIStatusError):
        return "PROVIDER_ERROR", f"OpenAI request failed ({error.status_code})"
    return "PROVIDER_ERROR", "OpenAI request failed"


def _mentions_context_length(error: openai.APIError) -> bool:
    if isinstance(error, openai.APIStatusError) and error.status_code not in (400, 413):
        return False
    text = f"{error.code or ''} {error.message}".lower()
    return any(hint in text for hint in _CONTEXT_HINTS)
