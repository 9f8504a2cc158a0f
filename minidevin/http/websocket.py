"""`/ws/tasks/{task_id}`: a task's events, history first, then live.

Close codes: 1000 the task ended; 1001 the server is shutting down; 4008 the
client fell too far behind (reconnect with `?after=<last seq>`).
Client messages: `{"type": "stop"}` and `{"type": "input", "content": "..."}`.

Limits: each client message counts against its user's rate limit (the REST
one); over it, the message is dropped with an `error` (`RATE_LIMITED`) and the
socket stays open. A user holds at most `MINIDEVIN_MAX_WEBSOCKETS_PER_USER`
sockets; one more is refused with 429 before the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from minidevin.api import Runtime
from minidevin.http.errors import error_body
from minidevin.http.keys import PRINCIPAL, RUNTIME, WEBSOCKETS
from minidevin.http.ratelimit import FixedWindowLimiter
from minidevin.runtime.errors import ApiError, ValidationFailed
from minidevin.runtime.hub import SlowSubscriber

CLOSE_TASK_ENDED = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_SLOW = 4008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_HANDSHAKE_TIMEOUT = 5.0
routes = web.RouteTableDef()
log = structlog.get_logger(__name__)
RATE_LIMITER = web.AppKey("websocket_rate_limiter", FixedWindowLimiter)  # the REST limiter
OPEN_PER_USER = web.AppKey("websockets_per_user", dict[str, int])


class TooManyWebSockets(ApiError):
    status = 429
    code = "TOO_MANY_WEBSOCKETS"


@routes.get("/ws/tasks/{task_id}")
async def task_stream(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    principal = request[PRINCIPAL]  # the access middleware made sure of it
    after = _after(request)
    task_id = request.match_info["task_id"]
    await runtime.get_task(task_id, owner=principal.user_id)
    user = principal.user_id
    open_per_user = request.app[OPEN_PER_USER]
    limit = runtime.settings.max_websockets_per_user
    if open_per_user.get(user, 0) >= limit:
        raise TooManyWebSockets(
            f"{limit} WebSockets are open for this user already "
            "(MINIDEVIN_MAX_WEBSOCKETS_PER_USER); close one first"
        )
    open_per_user[user] = open_per_user.get(user, 0) + 1
    try:
        return await _serve(request, runtime, task_id, after, user)
    finally:
        if open_per_user[user] <= 1:
            del open_per_user[user]
        else:
            open_per_user[user] -= 1


async def _serve(
    request: web.Request, runtime: Runtime, task_id: str, after: int, user: str
) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    closing = asyncio.Event()  # set when the pump begins the closing handshake
    pump = asyncio.create_task(_send_events(ws, runtime, task_id, after, user, closing))
    try:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    _count(request, runtime, user)
                    reply = await _client_message(runtime, task_id, user, message.data)
                except ApiError as exc:  # e.g. the session no longer answers
                    reply = _error(exc.detail, exc.code)
                if reply is not None:
                    await ws.send_json(reply)
            elif message.type == WSMsgType.ERROR:
                break
    finally:
        if closing.is_set():  # let the pump finish the closing handshake it started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), CLOSE_HANDSHAKE_TIMEOUT)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        request.app[WEBSOCKETS].discard(ws)
    return ws


def _count(request: web.Request, runtime: Runtime, user: str) -> None:
    """Count a client message against the user's rate limit (shared with REST)."""
    limit = runtime.settings.rate_limit_authenticated
    limiter = request.app.get(RATE_LIMITER)
    if limit and limiter is not None and not limiter.hit(f"user:{user}", limit)[0]:
        raise ApiError(
            f"rate limit of {limit} requests a minute exceeded; message dropped",
            code="RATE_LIMITED",
            status=429,
        )


def _after(request: web.Request) -> int:
    raw = request.query.get("after", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ValidationFailed("after: must be a non-negative integer (an event seq)")
    return int(raw)


async def _send_events(
    ws: web.WebSocketResponse,
    runtime: Runtime,
    task_id: str,
    after: int,
    owner: str,
    closing: asyncio.Event,
) -> None:
    try:
        async for event in runtime.events(task_id, after=after, owner=owner):
            await ws.send_json(event.to_message())
        closing.set()
        await ws.close(code=CLOSE_TASK_ENDED, message=b"task ended")
    except SlowSubscriber:
        closing.set()
        await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow: reconnect with ?after=<seq>")
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away
    except Exception:
        log.exception("websocket_pump_failed", task_id=task_id)
        closing.set()
        await ws.close(code=CLOSE_INTERNAL_ERROR, message=b"internal error")


async def _client_message(
    runtime: Runtime, task_id: str, owner: str, data: str
) -> dict[str, Any] | None:
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):  # (bad JSON, an integer of over 4,300 digits)
        message = None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "stop":
        await runtime.stop_task(task_id, owner=owner)
        return None
    if kind == "input":
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content:
            return _error("input needs a non-empty 'content' string", "VALIDATION_ERROR")
        if not await runtime.send_input(task_id, content, owner=owner):
            return _error("the task is not running; input was not delivered", "CONFLICT")
        return None
    return _error(
        'unknown message: send {"type": "stop"} or {"type": "input", ...}', "VALIDATION_ERROR"
    )


def _error(detail: str, code: str) -> dict[str, Any]:
    body = error_body(detail, code)
    return {"type": "error", "error": body["detail"], "code": code, "timestamp": body["timestamp"]}


async def close_all(app: web.Application) -> None:
    """On shutdown: close every WebSocket with 1001 (going away)."""
    for ws in set(app[WEBSOCKETS]):
        with contextlib.suppress(Exception):
            await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down")
