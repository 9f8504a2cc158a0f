"""The plumbing shared by the scripted fake APIs of `scripted_provider` and
`scripted_anthropic`.

`ScriptedServer` is a small aiohttp server on `host` (a free port) that answers
each request from the next scripted turn (`script`) or from `responder`, records
every request body, lets tests wait for requests (async or blocking), and runs
either on the caller's loop (`async with`) or on its own loop in a daemon thread
(`with`). Subclasses add their routes (`_add_routes`, pointing at `_handle`),
record what they need of each request (`_record`), and answer it in their wire
protocol (`_respond`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, Self, TypeVar

from aiohttp import web

TurnT = TypeVar("TurnT")


class ScriptedServer(Generic[TurnT]):
    """Scripted turns in, recorded requests out; see the module docstring."""

    _thread_name = "scripted-server"

    def __init__(
        self,
        *,
        responder: Callable[[dict[str, Any]], TurnT | Awaitable[TurnT]] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.responder = responder
        self.host = host
        self.port: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.client_disconnects = 0  # stalled streams the client walked away from
        self._turns: deque[TurnT] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_arrived: asyncio.Condition | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # --- public API -----------------------------------------------------------------

    def script(self, turns: TurnT | Iterable[TurnT]) -> None:
        """Append turns; each request consumes the next one (unless `responder` is set)."""
        with self._lock:
            self._turns.extend(turns if isinstance(turns, Iterable) else [turns])

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

    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._async_arrived = asyncio.Condition()
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 << 20)  # (real providers take large requests)
        self._add_routes(app)
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

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> Self:
        """Run the server on its own event loop in a daemon thread."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name=self._thread_name, daemon=True
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

    def __enter__(self) -> Self:
        return self.start_in_thread()

    def __exit__(self, *exc_info: object) -> None:
        self.stop_in_thread()

    # --- hooks for subclasses ---------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        """Route the protocol's endpoints (to `_handle`, or anything else)."""
        raise NotImplementedError

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        """Record more of `request` (headers, path); runs under the lock, before waiters wake."""

    async def _respond(
        self, request: web.Request, body: dict[str, Any], turn: TurnT | None
    ) -> web.StreamResponse:
        """Answer `request` with `turn` (None: the script ran out)."""
        raise NotImplementedError

    # --- request handling --------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with self._arrived:
            self._record(request, body)
            self.requests.append(body)
            self._arrived.notify_all()
        assert self._async_arrived is not None
        async with self._async_arrived:
            self._async_arrived.notify_all()
        return await self._respond(request, body, await self._next_turn(body))

    async def _next_turn(self, body: dict[str, Any]) -> TurnT | None:
        if self.responder is not None:
            turn = self.responder(body)
            return await turn if inspect.isawaitable(turn) else turn
        with self._lock:
            return self._turns.popleft() if self._turns else None

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


def split_text(text: str) -> list[str]:
    """`text` in streamable pieces, one per word (with its leading whitespace)."""
    return re.findall(r"\s*\S+|\s+", text)


def split_arguments(arguments: str, pieces: int = 3) -> list[str]:
    """Tool-call arguments (JSON text) in up to `pieces` streamable pieces."""
    size = max(1, -(-len(arguments) // pieces))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def arguments_text(arguments: dict[str, Any] | str) -> str:
    """Tool-call arguments as JSON text; a string is sent as is."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
