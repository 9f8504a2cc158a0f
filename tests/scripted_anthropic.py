"""A scripted fake of the Anthropic Messages API, for tests.

`ScriptedAnthropicServer` is a small aiohttp server on 127.0.0.1 (a free port)
that answers `POST /v1/messages` like the real API, streaming (SSE, with
`event:` and `data:` lines and `ping`s) or not, from the provider-neutral
`ScriptedTurn`s of `scripted_provider`, given in advance (`script`) or picked
per request (`responder`). It records every request body and its `x-api-key`
and `Authorization` headers (anthropic 2.x sends the key as a bearer token),
so tests can drive the real `anthropic` SDK over real HTTP.

    async with ScriptedAnthropicServer() as server:
        server.script([ScriptedTurn(text="Hello there")])
        client = anthropic.Anthropic(api_key="sk-ant-test", base_url=server.base_url)
        ...
        await server.wait_for_requests(1, timeout=5)

    with ScriptedAnthropicServer() as server:  # own loop on a background thread
        ...

How `ScriptedTurn` fields read here: `finish_reason` may use OpenAI names
("stop", "tool_calls", "length" become "end_turn", "tool_use", "max_tokens");
`error_code` goes to `error.details.error_code` ("context_length_exceeded" also
makes the message "prompt is too long ..."); `stall` holds the stream open after
the first content delta; `drop_after` counts SSE events (`message_start` and the
`ping` after it included); `drop_mode` "error" sends an `event: error`
(`error_body`, default an `overloaded_error`) instead of cutting the stream.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from scripted_base import ScriptedServer, arguments_text, split_arguments, split_text
from scripted_provider import Responder, ScriptedTurn

Event = tuple[str, dict[str, Any]]
_FINISH_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip


@dataclass
class ScriptedAnthropicTurn(ScriptedTurn):
    """A `ScriptedTurn` with Anthropic's prompt-cache counts in its usage."""

    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """An error in Anthropic's format."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


class ScriptedAnthropicServer(ScriptedServer[ScriptedTurn]):
    """Fake `POST /v1/messages`; see the module docstring."""

    _thread_name = "scripted-anthropic"

    def __init__(self, *, responder: Responder | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(responder=responder, host=host)
        self.api_keys: list[str | None] = []  # `x-api-key` of each request
        self.authorizations: list[str | None] = []  # `Authorization` of each request
        self.request_headers: list[dict[str, str]] = []
        self._tool_ids = 0
        self._message_ids = 0

    # --- public API -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The SDK's `base_url`: it appends `/v1/messages` itself."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str | None:
        """The key the latest request carried, as `x-api-key` or as a bearer token."""
        if not self.requests:
            return None
        authorization = self.authorizations[-1] or ""
        bearer = authorization[7:] if authorization.lower().startswith("bearer ") else None
        return self.api_keys[-1] or bearer

    # --- request handling --------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._handle)

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.api_keys.append(request.headers.get("x-api-key"))
        self.authorizations.append(request.headers.get("Authorization"))
        self.request_headers.append(dict(request.headers))

    async def _respond(
        self, request: web.Request, body: dict[str, Any], turn: ScriptedTurn | None
    ) -> web.StreamResponse:
        if turn is None:
            body = error_body("api_error", "scripted server: no turn left")
            return web.json_response(body, status=500, headers={"x-should-retry": "false"})
        if turn.error_status is not None:
            return self._error_response(turn)
        model = str(body.get("model", "scripted-model"))
        message = self._message(turn, model)
        if not body.get("stream"):
            return web.json_response(message, headers=turn.headers)
        return await self._stream(request, turn, self._events(turn, message))

    def _error_response(self, turn: ScriptedTurn) -> web.Response:
        status = turn.error_status or 500
        body = turn.error_body if turn.error_body is not None else _default_error(turn)
        headers = {"x-should-retry": "false", "request-id": "req_scripted", **turn.headers}
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def _new_ids(self, turn: ScriptedTurn) -> tuple[str, list[str]]:
        """(message id, tool use ids `toolu_N`, numbered across the server's life)."""
        with self._lock:
            first = self._tool_ids + 1
            self._tool_ids += len(turn.tool_calls)
            self._message_ids += 1
            message_id = f"msg_scripted_{self._message_ids}"
        return message_id, [f"toolu_{first + i}" for i in range(len(turn.tool_calls))]

    def _message(self, turn: ScriptedTurn, model: str) -> dict[str, Any]:
        """The whole message of `turn`, as a non-streaming answer carries it."""
        message_id, ids = self._new_ids(turn)
        content: list[dict[str, Any]] = []
        if turn.text:
            content.append({"type": "text", "text": turn.text})
        for call_id, (name, arguments) in zip(ids, turn.tool_calls, strict=True):
            tool_input = arguments
            if isinstance(arguments, str):
                try:
                    tool_input = json.loads(arguments or "{}")
                except json.JSONDecodeError:
                    tool_input = {"raw": arguments}
            content.append({"type": "tool_use", "id": call_id, "name": name, "input": tool_input})
        stop_reason = _FINISH_REASONS.get(turn.finish_reason or "", turn.finish_reason)
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason or ("tool_use" if turn.tool_calls else "end_turn"),
            "stop_sequence": None,
            "usage": {
                "input_tokens": turn.prompt_tokens,
                "output_tokens": turn.completion_tokens,
                "cache_creation_input_tokens": getattr(turn, "cache_creation_input_tokens", 0),
                "cache_read_input_tokens": getattr(turn, "cache_read_input_tokens", 0),
            },
        }

    @staticmethod
    def _events(turn: ScriptedTurn, message: dict[str, Any]) -> list[Event]:
        """The SSE stream of `message`, as (event name, data) pairs."""
        usage = {**message["usage"], "output_tokens": 1}
        start = {**message, "content": [], "stop_reason": None, "usage": usage}
        events: list[Event] = [("message_start", {"message": start}), ("ping", {})]
        arguments = iter(turn.tool_calls)
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                head = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in split_text(block["text"])]
            else:
                head = {**block, "input": {}}
                pieces = split_arguments(arguments_text(next(arguments)[1]))
                deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
            events.append(("content_block_start", {"index": index, "content_block": head}))
            events += [("content_block_delta", {"index": index, "delta": d}) for d in deltas]
            events.append(("content_block_stop", {"index": index}))
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        output = {"output_tokens": message["usage"]["output_tokens"]}
        events += [("message_delta", {"delta": delta, "usage": output}), ("message_stop", {})]
        return [(kind, {"type": kind, **data}) for kind, data in events]

    async def _stream(
        self, request: web.Request, turn: ScriptedTurn, events: list[Event]
    ) -> web.StreamResponse:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "request-id": "req_scripted",
        }
        response = web.StreamResponse(headers={**headers, **turn.headers})
        await response.prepare(request)
        stall_at = next(
            (i for i, (kind, _) in enumerate(events) if kind == "content_block_delta"), 0
        )
        for number, (kind, data) in enumerate(events):
            if turn.drop_midway and number >= turn.drop_after:
                await self._drop(request, response, turn)
                return response
            await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            if turn.stall and number >= stall_at:
                await self._hold_open(request)
                return response
            if turn.chunk_delay:
                await asyncio.sleep(turn.chunk_delay)
        await response.write_eof()
        return response

    @staticmethod
    async def _drop(request: web.Request, response: web.StreamResponse, turn: ScriptedTurn) -> None:
        if turn.drop_mode == "abort" and request.transport is not None:
            request.transport.abort()
            return
        if turn.drop_mode == "garbage":
            await response.write(b"event: content_block_delta\ndata: {not json\n\n")
        elif turn.drop_mode == "error":
            body = turn.error_body if isinstance(turn.error_body, dict) else None
            data = body or error_body("overloaded_error", "Overloaded")
            await response.write(f"event: error\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()


def _default_error(turn: ScriptedTurn) -> dict[str, Any]:
    status = turn.error_status or 500
    error_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    message = f"scripted error {status}"
    if turn.error_code == "context_length_exceeded":
        message = "prompt is too long: 250000 tokens > 200000 maximum"
    body = error_body(error_type, message)
    if turn.error_code:
        body["error"]["details"] = {"error_code": turn.error_code}
    return body
