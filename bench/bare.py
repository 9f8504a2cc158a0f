"""The baselines: bare aiohttp servers doing the least the real server must do.

- `python -m bench.bare --port P --body FILE`: a bare handler for
  `GET /api/sessions/{id}` returning the given JSON (no middlewares, no auth,
  no store), as its own process, like `minidevin serve`.
- `echo_app()`: a raw WebSocket echo.
- `Broadcast`: a raw fan-out; a ticker thread makes timestamped tokens at a
  rate and the loop sends each (serialized once) to every socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web


def rest_app(payload: Any) -> web.Application:
    async def get_session(request: web.Request) -> web.Response:
        return web.json_response(payload)

    app = web.Application()
    app.router.add_get("/api/sessions/{session_id}", get_session)
    return app


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/echo", echo)
    return app


class Broadcast:
    """`/ws`: a hello on connect, then every token of `go()` to every socket, then close 1000."""

    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.rate = rate
        self.sockets: set[web.WebSocketResponse] = set()
        self.app = web.Application()
        self.app.router.add_get("/ws", self._handler)
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    async def _handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        self.sockets.add(ws)
        await ws.send_str(json.dumps({"type": "status", "status": "running", "seq": 1}))
        try:
            async for _ in ws:
                pass
        finally:
            self.sockets.discard(ws)
        return ws

    def go(self) -> None:
        loop = asyncio.get_running_loop()
        self._sender = asyncio.create_task(self._send_all())
        self._thread = threading.Thread(target=self._tick, args=(loop,), daemon=True)
        self._thread.start()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = 1 / self.rate
        due = time.perf_counter() + random.uniform(0, interval)
        for seq in range(2, self.tokens + 2):
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            text = f"{time.perf_counter_ns()} "
            message = json.dumps({"type": "token", "content": text, "seq": seq})
            loop.call_soon_threadsafe(self._queue.put_nowait, message)
            due += interval
        final = {"type": "status", "status": "completed", "seq": self.tokens + 2}
        loop.call_soon_threadsafe(self._queue.put_nowait, json.dumps(final))
        loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def _send_all(self) -> None:
        while (message := await self._queue.get()) is not None:
            for ws in list(self.sockets):
                await ws.send_str(message)
        for ws in list(self.sockets):
            await ws.close(code=1000, message=b"done")

    async def wait(self) -> None:
        if self._sender is not None:
            await self._sender
        if self._thread is not None:
            self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description="the bare REST baseline server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="the JSON to answer with")
    args = parser.parse_args()
    payload = json.loads(args.body.read_text())
    web.run_app(rest_app(payload), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
