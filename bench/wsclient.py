"""The WebSocket client of the latency and fan-out benchmarks, as its own process.

Reads one JSON config line on stdin, prints `{"ready": true}` once every
socket is subscribed (it received a first message, or for `echo` is open),
then one JSON line of results when every socket is done.

- `events`: read each of `urls` until the server closes it; a token's
  latency is its receive time minus the creation time (perf_counter ns) in
  its text (a coalesced `token` event carries several: each counts); checks
  each socket saw every seq from 1 to the final status.
- `echo`: `sockets` sockets to `url`, each sending `count` timestamps at
  `rate`/s; the figure is the round trip.

The WebSocket protocol is spoken by a minimal `asyncio.Protocol` (RFC 6455
framing, no extensions) rather than aiohttp's client: with 500 sockets at
50 events/s the aiohttp client spent ~35 us a message and saturated its core,
so the figure measured the client. The receive time of every frame is the
moment its bytes arrived.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

CONNECT_AT_ONCE = 50
TextHandler = Callable[[bytes, int], None]


class RawSocket(asyncio.Protocol):
    def __init__(self, on_text: TextHandler) -> None:
        loop = asyncio.get_running_loop()
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, url: str, on_text: TextHandler) -> RawSocket:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        _, socket = await loop.create_connection(lambda: cls(on_text), parts.hostname, parts.port)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert socket.transport is not None
        socket.transport.write(request.encode())
        await socket.opened
        return socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        received = time.perf_counter_ns()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.opened.set_result(None)
        self._frames(received)

    def _frames(self, received: int) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length >= 126:
                start = 4 if length == 126 else 10
                if len(buffer) < start:
                    return
                length = int.from_bytes(buffer[2:start], "big")
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if opcode == 0x1:
                self.on_text(payload, received)
            elif opcode == 0x8:  # the server closes: answer, then hang up
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                self._send(0x8, payload[:2])
                assert self.transport is not None
                self.transport.close()
            elif opcode == 0x9:
                self._send(0xA, payload)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self, code: int = 1000) -> None:
        self._send(0x8, code.to_bytes(2, "big"))

    def _send(self, opcode: int, payload: bytes) -> None:
        """One final frame; client frames must be masked (a zero key leaves bytes as they are)."""
        size = len(payload)
        if size < 126:
            head = bytes((0x80 | opcode, 0x80 | size))
        elif size < 1 << 16:
            head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(head + b"\0\0\0\0" + payload)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}

    def rank(q: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]

    return {
        "count": len(ordered),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def ready() -> None:
    print(json.dumps({"ready": True}), flush=True)


async def events(config: dict[str, Any]) -> dict[str, Any]:
    latencies: list[float] = []
    per_socket: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    subscribed = [loop.create_future() for _ in config["urls"]]
    limit = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def one(url: str, first: asyncio.Future[None]) -> None:
        state: dict[str, Any] = {"seqs": [], "tokens": 0, "final": None}

        def on_text(payload: bytes, received: int) -> None:
            data = json.loads(payload)
            if not first.done():
                first.set_result(None)
            state["seqs"].append(data["seq"])
            if data["type"] == "token":  # (coalesced: several creation times in one)
                for stamp in data["content"].split():
                    state["tokens"] += 1
                    latencies.append((received - int(stamp)) / 1000)
            elif data["type"] == "status":
                state["final"] = data["status"]

        async with limit:
            socket = await RawSocket.connect(url, on_text)
        await socket.closed
        seqs = state["seqs"]
        per_socket.append(
            {
                "tokens": state["tokens"],
                "final": state["final"],
                "contiguous": seqs == list(range(1, len(seqs) + 1)),
                "close": socket.close_code,
            }
        )

    readers = [
        asyncio.create_task(one(u, f)) for u, f in zip(config["urls"], subscribed, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*subscribed), config.get("ready_timeout", 60))
    ready()
    await asyncio.wait_for(asyncio.gather(*readers), config["timeout"])
    token_counts = [s["tokens"] for s in per_socket]
    return {
        "latency_us": summary(latencies),
        "sockets": len(per_socket),
        "complete": sum(1 for s in per_socket if s["contiguous"] and s["final"] == "completed"),
        "tokens_min": min(token_counts, default=0),
        "tokens_max": max(token_counts, default=0),
        "close_codes": sorted({str(s["close"]) for s in per_socket}),
    }


async def echo(config: dict[str, Any]) -> dict[str, Any]:
    rtts: list[float] = []
    count, interval = config["count"], 1 / config["rate"]
    loop = asyncio.get_running_loop()

    async def open_one() -> tuple[RawSocket, asyncio.Future[None]]:
        got = [0]
        done: asyncio.Future[None] = loop.create_future()

        def on_text(payload: bytes, received: int) -> None:
            rtts.append((received - int(payload)) / 1000)
            got[0] += 1
            if got[0] == count and not done.done():
                done.set_result(None)

        return await RawSocket.connect(config["url"], on_text), done

    async def pace(socket: RawSocket, done: asyncio.Future[None]) -> None:
        due = time.perf_counter() + random.uniform(0, interval)
        for _ in range(count):
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            socket.send_text(str(time.perf_counter_ns()))
            due += interval
        await done
        socket.close()
        await socket.closed

    sockets = [await open_one() for _ in range(config["sockets"])]
    ready()
    await asyncio.wait_for(asyncio.gather(*(pace(*s) for s in sockets)), config["timeout"])
    return {"latency_us": summary(rtts), "sockets": len(sockets)}


def main() -> None:
    config = json.loads(sys.stdin.readline())
    run = events if config["mode"] == "events" else echo
    cpu, wall = time.process_time(), time.perf_counter()
    result = asyncio.run(run(config))
    result["client_cpu"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
