"""`/ws/tasks/{task_id}`: a task's events, history first, then live.

Close codes: 1000 the task ended; 1001 the server is shutting down; 4008 the
client fell too far behind (reconnect with `?after=<last seq>`); 1011 after an
`error` message `STORE_UNAVAILABLE` (the store cannot commit for now: reconnect
later with `?after=<last seq>`), or an internal error.

Fan-out: an event's JSON text is computed once (`Event.wire`) and the same
string goes to every subscriber. A send the transport takes at once (no drain
needed) completes without a timer or a task; only a send that has to wait for
the client runs under the deadline machinery below.

Deadlines: every send (an event, a reply, a close frame) must be taken by the
client within `MINIDEVIN_WS_SEND_TIMEOUT`. A client that does not drain is cut:
its transport is aborted (its buffers are full, so no close frame could reach
it), which frees its descriptor, its coroutines, its hub subscription and its
place in the per-user count at once. After the handler returns, a transport
still flushing its last bytes past the deadline is aborted too, so a stall
just after the final event holds nothing either. A slow reader whose every
send completes in time gets every event and the 1000 close.
Client messages: `{"type": "stop"}`, `{"type": "input", "content": "..."}`, and
`{"type": "approve", "call_id": "..."}` / `{"type": "reject", "call_id": "...",
"reason": "..."}` for a call that waits for approval (an `error` message answers a
decision that cannot be taken: unknown call, already decided, task ended).

Limits: each client message counts against its user's rate limit (the REST
one); over it, the message is dropped with an `error` (`RATE_LIMITED`) and the
socket stays open. A user holds at most `MINIDEVIN_MAX_WEBSOCKETS_PER_USER`
sockets; one more is refused with 429 before the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import struct
import sys
import termios
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Protocol

import structlog
from aiohttp import WSMsgType, web

from minidevin.api import Runtime
from minidevin.http.errors import error_body
from minidevin.http.keys import PRINCIPAL, RUNTIME, WEBSOCKETS
from minidevin.http.ratelimit import FixedWindowLimiter
from minidevin.runtime.errors import ApiError, ValidationFailed
from minidevin.runtime.hub import SlowSubscriber, StoreUnavailable
from minidevin.runtime.task_stream import wire_history_then_live

CLOSE_TASK_ENDED = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_SLOW = 4008
CLOSE_INTERNAL_ERROR = 1011
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


class _Transport(Protocol):
    def abort(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


# Linux: bytes in a socket's send queue the peer has not acknowledged (SIOCOUTQ)
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None


class _Cutter:
    """Sends and closes under the send deadline; aborts the transport when one is missed.

    The deadline is on progress: it starts with each send and starts again
    whenever the client takes some of the bytes waiting for it, so a slow reader
    may take longer than it over one large message, but a client that takes
    nothing for that long is cut within it.
    """

    def __init__(self, ws: web.WebSocketResponse, transport: _Transport, timeout: float) -> None:
        self.ws, self.transport, self.timeout = ws, transport, timeout
        self.cut = False

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one message; False (and the socket cut) if the client did not drain in time."""
        return await self.send_text(json.dumps(message))

    async def send_text(self, text: str) -> bool:
        """`send` of a message already serialized (the same string for every subscriber).

        The send is started at once: when the transport takes the frame without a
        drain (the common case) it is done with no timer armed; only a send that
        must wait for the client is finished under the deadline.
        """
        operation = self.ws.send_str(text)
        try:
            pending = operation.send(None)
        except StopIteration:
            return True
        except BaseException:
            operation.close()
            raise
        return await self._within_deadline(_Resumed(operation, pending), "send")

    async def close(self, code: int, message: bytes) -> None:
        """The closing handshake, bounded by the deadline (an abort if the frame cannot go)."""
        await self._within_deadline(self.ws.close(code=code, message=message), "close")

    async def _within_deadline(self, operation: Awaitable[Any], stage: str) -> bool:
        loop = asyncio.get_running_loop()
        check_every = self.timeout / 4

        def check(deadline: asyncio.Timeout, buffered: int, due: float) -> None:
            nonlocal watch
            now, late = self._unsent(), loop.time() - due
            when = deadline.when()
            assert when is not None
            if now < buffered:  # the client took some: the deadline starts again
                deadline.reschedule(loop.time() + self.timeout)
            elif late > check_every / 2:  # our own loop was busy: that time is not the client's
                deadline.reschedule(when + late)
            watch = loop.call_later(check_every, check, deadline, now, loop.time() + check_every)

        try:
            async with asyncio.timeout(self.timeout) as deadline:
                watch = loop.call_later(
                    check_every,
                    check,
                    deadline,
                    self._unsent(),
                    loop.time() + check_every,
                )
                try:
                    await operation
                finally:
                    watch.cancel()
        except TimeoutError:
            self.abort(stage)
            return False
        return True

    def reap(self) -> None:
        """After the handler: a closed transport still flushing keeps its descriptor until
        the client reads the rest; abort it once the client takes nothing for the deadline."""
        loop = asyncio.get_running_loop()
        check_every = self.timeout / 4

        def check(unsent: int, idle: float) -> None:
            if self.transport.get_write_buffer_size() == 0:
                return  # flushed: asyncio closes the socket (the kernel sends the rest)
            now = self._unsent()
            idle = 0.0 if now < unsent else idle + check_every
            if idle >= self.timeout:
                self.abort("flush")
            else:
                loop.call_later(check_every, check, now, idle)

        loop.call_later(check_every, check, self._unsent(), 0.0)

    def _unsent(self) -> int:
        """Bytes not yet taken by the client: ours, plus the kernel's not yet acknowledged."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if _OUTQ is not None and sock is not None:
            with contextlib.suppress(OSError, ValueError):
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0" * 4))[0]
        return unsent

    def abort(self, stage: str) -> None:
        if not self.cut:
            self.cut = True
            log.warning("websocket_stalled_cut", stage=stage, timeout=self.timeout)
        self.transport.abort()


class _Resumed:
    """Awaits the rest of a coroutine already started by hand (it yielded `pending`)."""

    def __init__(self, operation: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.operation, self.pending = operation, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        operation, pending = self.operation, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                operation.close()
                raise
            except BaseException as exc:  # (a cancel: the deadline, or the handler ending)
                try:
                    pending = operation.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = operation.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _serve(
    request: web.Request, runtime: Runtime, task_id: str, after: int, user: str
) -> web.WebSocketResponse:
    # (no close timeout of aiohttp's own: the cutter bounds the closing handshake on progress)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20, timeout=3600.0)
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None  # (prepare just wrote the handshake on it)
    cutter = _Cutter(ws, transport, runtime.settings.ws_send_timeout)
    request.app[WEBSOCKETS].add(ws)
    pump = asyncio.create_task(_send_events(cutter, runtime, task_id, after))
    receive: asyncio.Task[Any] | None = None
    try:
        while True:
            receive = receive or asyncio.create_task(ws.receive())
            await asyncio.wait({receive, pump}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                break  # the pump is done: close below, with no read pending
            message, receive = receive.result(), None
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    await _count(request, runtime, user)
                    reply = await _client_message(runtime, task_id, user, message.data)
                except ApiError as exc:  # e.g. the session no longer answers
                    reply = _error(exc.detail, exc.code)
                if reply is not None and not await cutter.send(reply):
                    break
            elif message.type not in (WSMsgType.PING, WSMsgType.PONG):
                break  # closed by the client, or an error
        if receive is not None:
            receive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receive
        if pump.done() and not pump.cancelled() and (closing := pump.result()) is not None:
            # The closing handshake with nobody else reading: the close frame goes after
            # the last event, then the client's own close frame is awaited, and only then
            # the connection ends (a client that sees its end first reports 1006).
            await cutter.close(*closing)
    finally:
        if receive is not None and not receive.done():
            receive.cancel()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        request.app[WEBSOCKETS].discard(ws)
        cutter.reap()
    return ws


async def _count(request: web.Request, runtime: Runtime, user: str) -> None:
    """Count a client message against the user's rate limit (shared with REST)."""
    limit = runtime.settings.rate_limit_authenticated
    limiter = request.app.get(RATE_LIMITER)
    if limit and limiter is not None and not (await limiter.hit(f"user:{user}", limit))[0]:
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
    cutter: _Cutter, runtime: Runtime, task_id: str, after: int
) -> tuple[int, bytes] | None:
    """Send the task's events; the close (code, reason) to send, or None if the client is gone."""
    try:
        # (the owner was checked before the upgrade; the history comes as message text)
        messages = wire_history_then_live(runtime.store, runtime.hub, task_id, after)
        async with contextlib.aclosing(messages) as events:
            async for text in events:
                if not await cutter.send_text(text):
                    return None  # cut: the subscription ends with this generator
        return CLOSE_TASK_ENDED, b"task ended"
    except SlowSubscriber:
        return CLOSE_TOO_SLOW, b"too slow: reconnect with ?after=<seq>"
    except StoreUnavailable as exc:
        if not await cutter.send(_error(str(exc), "STORE_UNAVAILABLE")):
            return None
        return CLOSE_INTERNAL_ERROR, b"store unavailable: reconnect with ?after=<seq>"
    except (ConnectionResetError, RuntimeError):
        return None  # the client went away
    except Exception:
        log.exception("websocket_pump_failed", task_id=task_id)
        return CLOSE_INTERNAL_ERROR, b"internal error"


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
    if kind in ("approve", "reject"):
        assert isinstance(message, dict)
        call_id, reason = message.get("call_id"), message.get("reason")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= 200:
            return _error(f"{kind} needs a 'call_id' string", "VALIDATION_ERROR")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 10_000):
            return _error(
                "'reason' must be a string of at most 10000 characters", "VALIDATION_ERROR"
            )
        await runtime.decide_approval(task_id, call_id, kind, reason, owner=owner)
        return None  # (its `approval_decision` event is the answer)
    return _error(
        'unknown message: send {"type": "stop"}, {"type": "input", ...}, '
        '{"type": "approve", "call_id": ...} or {"type": "reject", "call_id": ...}',
        "VALIDATION_ERROR",
    )


def _error(detail: str, code: str) -> dict[str, Any]:
    body = error_body(detail, code)
    return {"type": "error", "error": body["detail"], "code": code, "timestamp": body["timestamp"]}


async def close_all(app: web.Application) -> None:
    """On shutdown: close every WebSocket with 1001 (going away)."""
    timeout = app[RUNTIME].settings.ws_send_timeout

    async def close(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):  # (a stalled client is aborted by its handler)
                await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down")

    await asyncio.gather(*(close(ws) for ws in set(app[WEBSOCKETS])))
