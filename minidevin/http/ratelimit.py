"""Rate limits as the API document sets them, with `X-RateLimit-*` headers.

Authenticated requests count per user (`MINIDEVIN_RATE_LIMIT_AUTHENTICATED`,
default 100 a minute), the rest per client address
(`MINIDEVIN_RATE_LIMIT_ANONYMOUS`, default 10); 0 turns a limit off. Windows
are fixed minutes, so `X-RateLimit-Reset` (epoch seconds) is the same for
everyone. `/health` and CORS preflights are exempt. The client address is the
peer's, or `X-Forwarded-For`'s first entry when a setting says a trusted proxy
sits in front. With nodes, the counts are Redis's (`INCR` of a key per window),
so a client spreading its requests over the nodes meets the same limit; while
Redis cannot be reached, each node counts on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from minidevin.runtime.errors import ApiError

log = structlog.get_logger(__name__)
WINDOW_SECONDS = 60
RATE_HEADERS = web.RequestKey("rate_limit_headers", dict)


class RateLimited(ApiError):
    status = 429
    code = "RATE_LIMITED"


class FixedWindowLimiter:
    """Counts requests per key in the current fixed window (in Redis, with nodes)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        shared: Callable[[], Any] = lambda: None,
    ) -> None:
        self._clock = clock
        self._shared = shared  # the nodes' Redis client, or None (one node)
        self._window = 0
        self._counts: dict[str, int] = {}

    async def hit(self, key: str, limit: int) -> tuple[bool, dict[str, str]]:
        """Count one request; (allowed, the headers to send)."""
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        count = await self._shared_count(key, window)
        if count is None:
            count = self._local_count(key, window)
        reset = (window + 1) * WINDOW_SECONDS
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
            "X-RateLimit-Reset": str(reset),
        }
        if count > limit:
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
            return False, headers
        return True, headers

    def _local_count(self, key: str, window: int) -> int:
        if window != self._window:  # a new minute: forget the old counts
            self._window = window
            self._counts.clear()
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count

    async def _shared_count(self, key: str, window: int) -> int | None:
        client = self._shared()
        if client is None:
            return None
        name = f"minidevin.rate.{window}.{key}"
        try:
            async with client.pipeline(transaction=True) as pipe:
                counted, _ = await pipe.incr(name).expire(name, 2 * WINDOW_SECONDS).execute()
            return int(counted)
        except Exception as exc:  # (Redis away: this node counts alone meanwhile)
            log.warning("rate_limit_counted_locally", error=str(exc))
            return None


def client_address(request: web.Request, trust_forwarded_for: bool) -> str:
    """The peer, or behind a trusted proxy the address that proxy appended.

    Only the last `X-Forwarded-For` entry is the proxy's own word: the ones before
    it are whatever the client sent, and would let it pick a fresh address per
    request to slip out of every per-address limit.
    """
    if trust_forwarded_for:
        forwarded = request.headers.getall("X-Forwarded-For", [])
        last = forwarded[-1].split(",")[-1].strip() if forwarded else ""
        if last:
            return last
    return request.remote or "unknown"


async def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every limited response carries the headers, errors too."""
    headers = request.get(RATE_HEADERS)
    if headers:
        response.headers.update(headers)
