"""A scripted fake of the OpenAI Chat Completions API, for tests.

`ScriptedOpenAIServer` is a small aiohttp server on 127.0.0.1 (a free port)
that answers `POST /v1/chat/completions` like the real API, streaming (SSE)
or not, from `ScriptedTurn`s given in advance (`script`) or picked per
request (`responder`). It records every request body and `Authorization`
header, so tests can drive the real `openai` SDK over real HTTP.

    async with ScriptedOpenAIServer() as server:
        server.script([ScriptedTurn(text="Hello there")])
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url)
        ...
        await server.wait_for_requests(1, timeout=5)

    with ScriptedOpenAIServer() as server:  # own loop on a background thread
        ...
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from scripted_base import ScriptedServer, arguments_text, split_arguments, split_text

ToolArguments = dict[str, Any] | str
Responder = Callable[[dict[str, Any]], "ScriptedTurn | Awaitable[ScriptedTurn]"]


@dataclass
class ScriptedTurn:
    """One scripted answer.

    `text` streams as several content deltas (one per word); each tool call is
    `(name, arguments)` with arguments a dict (sent as JSON) or a raw string,
    and streams as a first delta with id/name then the arguments in pieces.
    With `error_status` the server answers that HTTP error instead (body
    `error_body`, default an OpenAI-style error object). `stall` sends the first
    chunk, then holds the stream open until the client goes away or the server
    stops; `drop_midway` cuts the connection after `drop_after` chunks (or, per
    `drop_mode`, ends the body early without finish/[DONE], or sends garbage).
    """

    text: str = ""
    tool_calls: list[tuple[str, ToolArguments]] = field(default_factory=list)
    prompt_tokens: int = 10
    completion_tokens: int = 5
    finish_reason: str | None = None  # default: "tool_calls" if any, else "stop"
    error_status: int | None = None
    error_body: dict[str, Any] | str | None = None
    error_code: str | None = None  # `error.code` of the default error body
    headers: dict[str, str] = field(default_factory=dict)
    stall: bool = False
    drop_midway: bool = False
    drop_after: int = 2
    drop_mode: str = "abort"  # or "eof": end the body cleanly; "garbage": send non-JSON
    chunk_delay: float = 0.0  # seconds between streamed chunks
    no_usage: bool = False  # like llama.cpp or vLLM without `stream_options`: no usage chunk


def finish(summary: str = "done") -> ScriptedTurn:
    """A turn that calls `finish` with `summary`, successfully."""
    return ScriptedTurn(tool_calls=[("finish", {"summary": summary, "success": True})])


class ScriptedOpenAIServer(ScriptedServer[ScriptedTurn]):
    """Fake `POST /v1/chat/completions`; see the module docstring."""

    _thread_name = "scripted-openai"

    def __init__(self, *, responder: Responder | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(responder=responder, host=host)
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []  # path and query of each completion request
        self.api_keys: list[str | None] = []  # Azure's `api-key` header of each request
        self.ollama_models: list[str] = []  # what `GET /api/tags` lists
        self._call_ids = 0
        self._completion_ids = 0

    # --- public API -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def authorization(self) -> str | None:
        """The `Authorization` header of the latest request."""
        return self.authorizations[-1] if self.authorizations else None

    # --- request handling --------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)
        # Azure OpenAI's path for the same protocol, and Ollama's model list
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._handle)
        app.router.add_get("/api/tags", self._tags)

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": name} for name in self.ollama_models]})

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.paths.append(request.path_qs)
        self.api_keys.append(request.headers.get("api-key"))
        self.authorizations.append(request.headers.get("Authorization"))

    async def _respond(
        self, request: web.Request, body: dict[str, Any], turn: ScriptedTurn | None
    ) -> web.StreamResponse:
        if turn is None:
            return web.json_response(
                {"error": {"message": "scripted server: no turn left", "type": "server_error"}},
                status=500,
                headers={"x-should-retry": "false"},
            )
        if turn.error_status is not None:
            return self._error_response(turn)
        model = str(body.get("model", "scripted-model"))
        if not body.get("stream"):
            return web.json_response(self._completion(turn, model), headers=turn.headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._stream(request, turn, model, include_usage)

    def _error_response(self, turn: ScriptedTurn) -> web.Response:
        body = turn.error_body
        if body is None:
            body = {
                "error": {
                    "message": f"scripted error {turn.error_status}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": turn.error_code,
                }
            }
        headers = {"x-should-retry": "false", **turn.headers}
        if isinstance(body, str):
            return web.Response(status=turn.error_status, text=body, headers=headers)
        return web.json_response(body, status=turn.error_status, headers=headers)

    def _new_ids(self, turn: ScriptedTurn) -> tuple[str, list[str]]:
        """(completion id, tool call ids `call_N`, numbered across the server's life)."""
        with self._lock:
            first = self._call_ids + 1
            self._call_ids += len(turn.tool_calls)
            self._completion_ids += 1
            completion_id = f"chatcmpl-scripted-{self._completion_ids}"
        return completion_id, [f"call_{first + i}" for i in range(len(turn.tool_calls))]

    @staticmethod
    def _finish_reason(turn: ScriptedTurn) -> str:
        return turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")

    @staticmethod
    def _usage(turn: ScriptedTurn) -> dict[str, int]:
        return {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "total_tokens": turn.prompt_tokens + turn.completion_tokens,
        }

    def _completion(self, turn: ScriptedTurn, model: str) -> dict[str, Any]:
        completion_id, ids = self._new_ids(turn)
        message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments_text(arguments)},
                }
                for call_id, (name, arguments) in zip(ids, turn.tool_calls, strict=True)
            ]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": self._finish_reason(turn)}
            ],
            "usage": self._usage(turn),
        }

    def _chunks(self, turn: ScriptedTurn, model: str, include_usage: bool) -> list[dict[str, Any]]:
        completion_id, ids = self._new_ids(turn)
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return {**base, "choices": [choice]}

        pieces = split_text(turn.text)
        chunks = [chunk({"role": "assistant", "content": pieces[0] if pieces else ""})]
        chunks += [chunk({"content": piece}) for piece in pieces[1:]]
        for index, (call_id, (name, arguments)) in enumerate(
            zip(ids, turn.tool_calls, strict=True)
        ):
            head = {"index": index, "id": call_id, "type": "function"}
            head["function"] = {"name": name, "arguments": ""}
            chunks.append(chunk({"tool_calls": [head]}))
            for piece in split_arguments(arguments_text(arguments)):
                delta = {"index": index, "function": {"arguments": piece}}
                chunks.append(chunk({"tool_calls": [delta]}))
        chunks.append(chunk({}, self._finish_reason(turn)))
        if include_usage and not turn.no_usage:
            chunks.append({**base, "choices": [], "usage": self._usage(turn)})
        return chunks

    async def _stream(
        self, request: web.Request, turn: ScriptedTurn, model: str, include_usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **turn.headers,
            }
        )
        await response.prepare(request)
        for number, chunk in enumerate(self._chunks(turn, model, include_usage)):
            if turn.drop_midway and number >= turn.drop_after:
                if turn.drop_mode == "garbage":
                    await response.write(b"data: {not json\n\n")
                if turn.drop_mode == "abort" and request.transport is not None:
                    request.transport.abort()
                else:
                    await response.write_eof()
                return response
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if turn.stall:
                await self._hold_open(request)
                return response
            if turn.chunk_delay:
                await asyncio.sleep(turn.chunk_delay)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
