"""Connection limits for `minidevin serve`: a request-head deadline and a per-address cap.

A slowloris client opens many connections and sends each a request head a
byte at a time, so the server runs out of descriptors. Two limits stop it:

- **Head deadline** (`MINIDEVIN_REQUEST_HEAD_TIMEOUT`): aiohttp's keep-alive
  timer is armed when a connection opens and again after each response, and
  when it fires on a connection that is still waiting for a whole request head
  (nothing sent, or half a head), it closes it; a request being handled is
  never cut. `GuardedAppRunner` sets that timer to the head deadline, so a
  connection has that many seconds to send each request head (an idle
  keep-alive connection closes after as long).
- **Per-address cap** (`MINIDEVIN_MAX_CONNECTIONS_PER_ADDRESS`): the runner
  hands asyncio a protocol factory that counts open connections per peer
  address. A connection beyond the cap is answered `429` (the error format)
  and closed as soon as it is accepted, before aiohttp reads a byte of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from minidevin.http.errors import error_body

log = structlog.get_logger(__name__)


class AddressCounts:
    """Open connections per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self.refused = 0

    def admit(self, address: str) -> bool:
        if self.open.get(address, 0) >= self.limit:
            self.refused += 1
            return False
        self.open[address] = self.open.get(address, 0) + 1
        return True

    def leave(self, address: str) -> None:
        left = self.open.get(address, 0) - 1
        if left > 0:
            self.open[address] = left
        else:
            self.open.pop(address, None)


def _refusal(limit: int) -> bytes:
    body = json.dumps(
        error_body(
            f"too many open connections from this address (at most {limit}); retry later",
            "TOO_MANY_CONNECTIONS",
        )
    ).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Guarded(asyncio.Protocol):
    """Stands in front of aiohttp's protocol: counts the connection, or refuses it."""

    def __init__(self, make: Callable[[], asyncio.Protocol], counts: AddressCounts) -> None:
        self._make = make
        self._counts = counts
        self._inner: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._counts.admit(self._address):
            assert isinstance(transport, asyncio.Transport)
            transport.write(_refusal(self._counts.limit))
            transport.close()
            return
        self._inner = self._make()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._counts.leave(self._address)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedAppRunner(web.AppRunner):
    """An `AppRunner` whose sites apply the head deadline and the per-address cap."""

    def __init__(
        self,
        app: web.Application,
        *,
        request_head_timeout: float,
        max_connections_per_address: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=request_head_timeout, **kwargs)
        self.counts = AddressCounts(max_connections_per_address)

    @property
    def server(self) -> Any:  # what sites hand to `loop.create_server`
        inner = super().server
        if inner is None:
            return None
        counts = self.counts
        return lambda: _Guarded(inner, counts)


def guarded_runner(app: web.Application, settings: Any, **kwargs: Any) -> GuardedAppRunner:
    """The runner for `app` with the limits of `settings`."""
    return GuardedAppRunner(
        app,
        request_head_timeout=settings.request_head_timeout,
        max_connections_per_address=settings.max_connections_per_address,
        **kwargs,
    )
