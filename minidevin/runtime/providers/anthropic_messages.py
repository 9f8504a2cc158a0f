"""`Model` over the Anthropic Messages API, with the official sync `anthropic` SDK.

Conversations arrive in the OpenAI chat format and are translated here: system
messages become the `system` parameter, assistant `tool_calls` become `tool_use`
blocks, `tool` messages become `tool_result` blocks of a user turn, and messages
of one role in a row merge (Anthropic wants user and assistant to alternate).
`text_delta`s go to `on_token` as they stream; a turn is complete only once
`message_stop` has arrived. Cancellation works as in `openai_chat`: shutting the
socket down wakes the worker's blocked read (see `streaming.abort_stream`); the
wait for response headers and the SDK's retry sleeps are bounded by its timeout.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anthropic
import httpx2

from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.providers.base import ModelTurn, ProviderError, TokenSink, ToolCall, Usage
from minidevin.runtime.providers.streaming import (
    admit_output,
    check_admitted,
    consume_stream,
    provider_error,
)

_MalformedStream = json.JSONDecodeError | UnicodeDecodeError
_TransportFailure = httpx2.HTTPError | httpx2.StreamError
_CONTEXT_HINTS = ("prompt is too long", "prompt too long", "context length", "context_length")
_CONTEXT_HINTS += ("context window", "maximum context", "too many tokens")
# The status an `error.type` stands for: an `event: error` in a 200 stream has none of its own.
_STATUS_OF_ERROR_TYPE = dict(
    invalid_request_error=400, authentication_error=401, billing_error=402, permission_error=403,
    not_found_error=404, request_too_large=413, rate_limit_error=429, api_error=500,
    timeout_error=504, overloaded_error=529,
)  # fmt: skip
_INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_USAGE_FIELDS = (*_INPUT_FIELDS, "output_tokens")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def anthropic_client(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float = 600.0,
    max_retries: int = 2,
) -> anthropic.Anthropic:
    """An `anthropic.Anthropic` client; `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL` fill gaps."""
    key = api_key or os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise ProviderError("PROVIDER_NOT_CONFIGURED", "ANTHROPIC_API_KEY is not set")
    url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
    return anthropic.Anthropic(api_key=key, base_url=url, timeout=timeout, max_retries=max_retries)


# --- OpenAI chat format -> Anthropic Messages ----------------------------------------------


def to_anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI `{"type": "function", "function": {...}}` tools as Anthropic tools."""
    translated = []
    for tool in tools:
        function = tool.get("function")
        if not isinstance(function, dict):  # already in Anthropic's format
            translated.append(tool)
            continue
        entry: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        translated.append(entry)
    return translated


def to_anthropic_messages(
    messages: list[dict[str, Any]],
) -> tuple[str | None, list[dict[str, Any]]]:
    """(system prompt, alternating user/assistant messages of content blocks)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            blocks = _content_blocks(message.get("content"))
            system.extend(block["text"] for block in blocks if block.get("type") == "text")
            continue
        if role == "assistant":
            blocks = _content_blocks(message.get("content"))
            blocks += [_tool_use_block(call) for call in message.get("tool_calls") or ()]
        elif role == "tool":
            role, blocks = "user", [_tool_result_block(message)]
        else:
            role, blocks = "user", _content_blocks(message.get("content"))
        if not blocks:
            continue  # Anthropic refuses empty turns
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # tool results must open the user turn that answers the tool calls
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return ("\n\n".join(system) or None), turns


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (a string or a list of parts) as Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            blocks += _content_blocks(part)
        elif part.get("type") == "text":
            blocks += _content_blocks(part.get("text"))
        elif part.get("type") == "image_url":
            blocks.append(_image_block(part["image_url"]))
        else:  # already an Anthropic block
            blocks.append(part)
    return blocks


def _image_block(image_url: dict[str, Any] | str) -> dict[str, Any]:
    url = image_url if isinstance(image_url, str) else image_url["url"]
    match = re.match(r"data:([^;,]+);base64,(.*)", url, re.DOTALL)
    if match:
        source = {"type": "base64", "media_type": match[1], "data": match[2]}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or ""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except (json.JSONDecodeError, TypeError):
        parsed = None
    tool_input = parsed if isinstance(parsed, dict) else {"raw": arguments}
    name = function.get("name") or "unknown"
    return {"type": "tool_use", "id": _safe_id(call.get("id")), "name": name, "input": tool_input}


def _tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, str):
        content = _content_blocks(content) if content else ""
    return {
        "type": "tool_result",
        "tool_use_id": _safe_id(message.get("tool_call_id")),
        "content": content,
    }


def _safe_id(call_id: Any) -> str:
    """Anthropic ids match `[A-Za-z0-9_-]+`; ids from other providers may not."""
    return _UNSAFE_ID.sub("_", str(call_id or "")) or "call_unknown"


# --- stream events -> ModelTurn --------------------------------------------------------------


@dataclass
class _PartialCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    initial_input: Any = None


class _TurnBuilder:
    """Folds raw stream events into a `ModelTurn`."""

    def __init__(self, on_token: TokenSink) -> None:
        self._on_token = on_token
        self._text: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self._usage = dict.fromkeys(_USAGE_FIELDS, 0)
        self._finish_reason: str | None = None
        self._stopped = False

    def add(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self._take_usage(getattr(event.message, "usage", None))
        elif kind == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                initial = getattr(block, "input", None)
                call = _PartialCall(block.id, block.name, initial_input=initial)
                self._calls[event.index] = call
            elif block.type == "text" and block.text:
                self._add_text(block.text)
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                self._add_text(delta.text)
            elif delta.type == "input_json_delta" and event.index in self._calls:
                check_admitted(delta.partial_json, admit_output(delta.partial_json))
                self._calls[event.index].arguments.append(delta.partial_json)
        elif kind == "message_delta":
            self._finish_reason = event.delta.stop_reason or self._finish_reason
            self._take_usage(getattr(event, "usage", None))
        elif kind == "message_stop":
            self._stopped = True

    def _add_text(self, text: str) -> None:
        kept = admit_output(text)  # (the turn's output cap)
        if kept:
            self._text.append(kept)
            self._on_token(kept)
        check_admitted(text, kept)

    def _take_usage(self, usage: Any) -> None:
        """Counts in `message_start` and `message_delta` are cumulative: the latest wins."""
        for name in self._usage:
            value = getattr(usage, name, None)
            if isinstance(value, int):
                self._usage[name] = value

    def build(self) -> ModelTurn:
        if not self._stopped:
            raise ProviderError(
                "PROVIDER_UNAVAILABLE", "Anthropic stream ended before message_stop"
            )
        calls = []
        for index in sorted(self._calls):
            call = self._calls[index]
            arguments = "".join(call.arguments)
            if not arguments.strip() and call.initial_input:
                arguments = json.dumps(call.initial_input)
            elif not arguments.strip() and self._finish_reason != "max_tokens":
                arguments = "{}"  # (cut off by max_tokens, it stays empty: not a whole call)
            calls.append(ToolCall(id=call.id, name=call.name, arguments=arguments))
        return ModelTurn(
            text="".join(self._text),
            tool_calls=tuple(calls),
            usage=Usage(
                prompt_tokens=sum(self._usage[name] for name in _INPUT_FIELDS),
                completion_tokens=self._usage["output_tokens"],
            ),
            finish_reason=self._finish_reason,
        )


class AnthropicModel:
    """A `Model` that streams the Messages API through the sync Anthropic SDK."""

    def __init__(
        self,
        model_id: str,
        client: anthropic.Anthropic,
        *,
        api_model: str | None = None,
        max_tokens: int = 8192,
    ) -> None:
        self.model_id = model_id
        self.api_model = api_model or model_id
        self.max_tokens = max_tokens
        self._client = client

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    def build_request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The keyword arguments of `messages.create` for this conversation."""
        system, turns = to_anthropic_messages(messages)
        request: dict[str, Any] = {
            "model": self.api_model,
            "max_tokens": self.max_tokens,
            "messages": turns,
            "stream": True,
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = to_anthropic_tools(tools)
        return request

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        cancel.raise_if_set()
        request = self.build_request(messages, tools)
        builder = _TurnBuilder(on_token)
        consume_stream(
            lambda: self._client.messages.create(**request),
            builder.add,
            cancel,
            self._raise_provider_error,
        )
        return builder.build()

    def _raise_provider_error(self, error: Exception) -> NoReturn:
        if not isinstance(error, anthropic.AnthropicError | _TransportFailure | _MalformedStream):
            raise error  # not the provider's failure (e.g. raised by on_token)
        code, summary = _classify(error)
        secrets = (self._client.api_key, self._client.auth_token)
        raise provider_error(code, summary, error, *secrets) from None


def _classify(error: Exception) -> tuple[str, str]:
    """(ProviderError code, summary) for an SDK or transport error."""
    if isinstance(error, anthropic.APITimeoutError | httpx2.TimeoutException):
        return "PROVIDER_TIMEOUT", "Anthropic request timed out"
    if isinstance(error, anthropic.APIConnectionError | _TransportFailure):
        return "PROVIDER_UNAVAILABLE", "Anthropic connection failed"
    if isinstance(error, _MalformedStream):  # an SSE event that is not JSON / UTF-8
        return "PROVIDER_UNAVAILABLE", "Anthropic stream was malformed"
    if not isinstance(error, anthropic.APIStatusError):
        return "PROVIDER_ERROR", "Anthropic request failed"
    status = error.status_code
    if status < 400:  # an error event inside the stream
        status = _STATUS_OF_ERROR_TYPE.get(str(error.type), 0)
    if status in (401, 403):
        return "PROVIDER_AUTH_FAILED", "Anthropic rejected the credentials"
    if status == 429:
        return "PROVIDER_RATE_LIMITED", "Anthropic rate limit reached"
    if status == 408:
        return "PROVIDER_TIMEOUT", "Anthropic request timed out (408)"
    if status == 529:
        return "PROVIDER_UNAVAILABLE", "Anthropic is overloaded (529)"
    if status >= 500:
        return "PROVIDER_UNAVAILABLE", f"Anthropic server error {status}"
    if status in (400, 413) and _mentions_context_length(error):
        return "CONTEXT_LENGTH_EXCEEDED", "The conversation is too long for the model"
    if 400 <= status < 500:
        return "PROVIDER_BAD_REQUEST", f"Anthropic refused the request ({status})"
    return "PROVIDER_ERROR", f"Anthropic request failed ({error.status_code})"


def _mentions_context_length(error: anthropic.APIStatusError) -> bool:
    text = f"{error.error_code or ''} {error.api_message or error.message}".lower()
    return any(hint in text for hint in _CONTEXT_HINTS)
