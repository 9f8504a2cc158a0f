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
import contextlib
import inspect
import json
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

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


def _split_text(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+", text)


def _split_arguments(arguments: str, pieces: int = 3) -> list[str]:
    size = max(1, -(-len(arguments) // pieces))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


class ScriptedOpenAIServer:
    """Fake `POST /v1/chat/completions`; see the module docstring."""

    def __init__(self, *, responder: Responder | None = None, host: str = "127.0.0.1") -> None:
        self.responder = responder
        self.host = host
        self.port: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.client_disconnects = 0  # stalled streams the client walked away from
        self.paths: list[str] = []  # path and query of each completion request
        self.api_keys: list[str | None] = []  # Azure's `api-key` header of each request
        self.ollama_models: list[str] = []  # what `GET /api/tags` lists
        self._turns: deque[ScriptedTurn] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._call_ids = 0
        self._completion_ids = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_arrived: asyncio.Condition | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

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

    def script(self, turns: ScriptedTurn | Iterable[ScriptedTurn]) -> None:
        """Append turns; each request consumes the next one (unless `responder` is set)."""
        with self._lock:
            self._turns.extend([turns] if isinstance(turns, ScriptedTurn) else turns)

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        """Wait until at least `n` requests have arrived; TimeoutError otherwise."""
        if self._loop is not asyncio.get_running_loop() or self._async_arrived is None:
            await asyncio.to_thread(self.wait_for_requests_sync, n, timeout)
            return
        condition = self._async_arrived
        try:
            async with asyncio.timeout(timeout):
                async with condition:
                    await condition.wait_for(lambda: len(self.requests) >= n)
        except TimeoutError:
            raise TimeoutError(f"{len(self.requests)} of {n} requests arrived") from None

    def wait_for_requests_sync(self, n: int, timeout: float = 5.0) -> None:
        """Blocking `wait_for_requests`, for sync tests (server on another loop)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{len(self.requests)} of {n} requests arrived")

    async def start(self) -> ScriptedOpenAIServer:
        self._loop = asyncio.get_running_loop()
        self._async_arrived = asyncio.Condition()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        # Azure OpenAI's path for the same protocol, and Ollama's model list
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._handle)
        app.router.add_get("/api/tags", self._tags)
        self._runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()  # releases stalled streams
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedOpenAIServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> ScriptedOpenAIServer:
        """Run the server on its own event loop in a daemon thread."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name="scripted-openai", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
        return self

    def stop_in_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._thread = None

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start_in_thread()

    def __exit__(self, *exc_info: object) -> None:
        self.stop_in_thread()

    # --- request handling --------------------------------------------------------------

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": name} for name in self.ollama_models]})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.paths.append(request.path_qs)
        self.api_keys.append(request.headers.get("api-key"))
        with self._arrived:
            self.requests.append(body)
            self.authorizations.append(request.headers.get("Authorization"))
            self._arrived.notify_all()
        assert self._async_arrived is not None
        async with self._async_arrived:
            self._async_arrived.notify_all()

        turn = await self._next_turn(body)
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

    async def _next_turn(self, body: dict[str, Any]) -> ScriptedTurn | None:
        if self.responder is not None:
            turn = self.responder(body)
            return await turn if inspect.isawaitable(turn) else turn
        with self._lock:
            return self._turns.popleft() if self._turns else None

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
                    "function": {"name": name, "arguments": _arguments_text(arguments)},
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

        pieces = _split_text(turn.text)
        chunks = [chunk({"role": "assistant", "content": pieces[0] if pieces else ""})]
        chunks += [chunk({"content": piece}) for piece in pieces[1:]]
        for index, (call_id, (name, arguments)) in enumerate(
            zip(ids, turn.tool_calls, strict=True)
        ):
            head = {"index": index, "id": call_id, "type": "function"}
            head["function"] = {"name": name, "arguments": ""}
            chunks.append(chunk({"tool_calls": [head]}))
            for piece in _split_arguments(_arguments_text(arguments)):
                delta = {"index": index, "function": {"arguments": piece}}
                chunks.append(chunk({"tool_calls": [delta]}))
        chunks.append(chunk({}, self._finish_reason(turn)))
        if include_usage:
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

    async def _hold_open(self, request: web.Request) -> None:
        """Wait until the client disconnects or the server stops."""
        assert self._stopping is not None
        while not self._stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                self.client_disconnects += 1
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.02)
        if request.transport is not None:
            request.transport.abort()


def _arguments_text(arguments: ToolArguments) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
