"""Redis between nodes: committed events to the nodes that watch a task, commands to a node.

With `MINIDEVIN_REDIS_URL`, several `minidevin serve` processes (nodes) share one
PostgreSQL database. A task runs on one node (its session's); any node may
stream it or be asked to stop, answer or approve it. Two kinds of traffic:

- **Events.** After its store commits a batch, the running node publishes the
  batch's events on one channel per task (`events.<task>`). A node subscribes
  to a task's channel while one of its clients streams that task, and feeds
  what arrives to its own hub, as its store would (`EventHub.publish`). A
  stream subscribes (and waits for Redis to confirm it) before it reads the
  history, and drops what it has seen by `seq`: no gap and no duplicate at the
  switch. Redis pub/sub keeps nothing: after a lost connection the bus
  subscribes again and asks the hub to re-read every watched task from the
  log (`EventHub.resync`), so what was published meanwhile is not lost.
- **Commands.** `call(node, op, args)` publishes a request on the node's own
  channel (`node.<id>`) and waits for the answer on the caller's; the node runs
  `handle(op, args)` and answers with the result or the API error it raised
  (type and detail), which the caller raises again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from minidevin.runtime.errors import ApiError, Unavailable
from minidevin.runtime.events import Event

if TYPE_CHECKING:
    import redis.asyncio as redis

log = structlog.get_logger(__name__)
PREFIX = "minidevin."
CALL_TIMEOUT = 10.0  # seconds a node has to answer a command
RECONNECT_MAX = 2.0  # seconds between attempts at most, while Redis is away
SEND_ATTEMPTS = 5  # a publish tried this many times (then dropped: streams re-read the log)
Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class NodeBus:
    """One node's connection to the others (see the module's notes)."""

    def __init__(
        self,
        url: str,
        node_id: str,
        deliver: Callable[[list[Event]], None],
        handle: Handler,
        resync: Callable[[list[str]], None],
    ) -> None:
        self.url = url
        self.node_id = node_id
        self._deliver = deliver  # events from other nodes, to this node's hub
        self._handle = handle  # a command for this node
        self._resync = resync  # after an outage: these tasks' streams re-read the log
        self._client: redis.Redis | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._watching: dict[str, int] = {}  # task id -> streams of this node watching it
        # channel -> resolved once Redis confirms the subscription (every watcher waits on it)
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        self._calls: dict[str, asyncio.Future[Any]] = {}
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[Any]] = set()  # commands being answered, unsubscribes
        self.connected = False

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    @property
    def client(self) -> redis.Redis:
        """The connection for plain commands (raises `Unavailable` before `start`)."""
        if self._client is None:
            raise Unavailable("the node bus is not started")
        return self._client

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and listen; raises `Unavailable` if Redis cannot be reached now."""
        import redis.asyncio as aioredis  # (only with nodes: it imports tracing's SDK if present)

        self._client = aioredis.from_url(
            self.url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10
        )
        try:
            await self._client.ping()
        except Exception as exc:  # (refused, unreachable, a bad URL: one line either way)
            await self._client.aclose()
            raise Unavailable(f"Redis at {_where(self.url)} cannot be reached: {exc}") from None
        await self._listen()
        self._reader = asyncio.create_task(self._read_forever(), name="node-bus-reader")
        self._sender = asyncio.create_task(self._send_forever(), name="node-bus-sender")

    async def close(self) -> None:
        for task in (self._reader, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for pending in self._calls.values():
            if not pending.done():
                pending.set_exception(Unavailable("this node is shutting down"))
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    # -- events -----------------------------------------------------------------------------

    def publish(self, events: list[Event]) -> None:
        """After a commit, on the loop: this node's events, to whoever watches their tasks
        (in commit order; never blocks)."""
        by_task: dict[str, list[list[Any]]] = {}
        for event in events:
            by_task.setdefault(event.task_id, []).append(
                [event.seq, event.type, event.data, event.timestamp]
            )
        for task_id, rows in by_task.items():
            body = json.dumps({"node": self.node_id, "task": task_id, "events": rows})
            self._outbox.put_nowait((PREFIX + "events." + task_id, body))

    async def watch(self, task_id: str) -> None:
        """Receive the task's events from other nodes, from the moment this returns (at once
        while Redis is away: the stream is told to re-read the log when it is back)."""
        self._watching[task_id] = self._watching.get(task_id, 0) + 1
        channel = PREFIX + "events." + task_id
        subscribed = self._subscribed.get(channel)
        if subscribed is None:
            subscribed = self._subscribed[channel] = asyncio.get_running_loop().create_future()
            if self.connected:
                self._spawn(self._subscribe(channel))
        if self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(subscribed), CALL_TIMEOUT)

    def unwatch(self, task_id: str) -> None:
        left = self._watching.get(task_id, 0) - 1
        if left > 0:
            self._watching[task_id] = left
            return
        self._watching.pop(task_id, None)
        channel = PREFIX + "events." + task_id
        self._subscribed.pop(channel, None)
        if self._pubsub is not None and self.connected:
            self._spawn(self._unsubscribe(channel))

    # -- commands ---------------------------------------------------------------------------

    async def call(self, node: str, op: str, args: dict[str, Any]) -> Any:
        """Run `op` on `node` and return its result (or raise its API error)."""
        if self._client is None or not self.connected:
            raise Unavailable("the other nodes cannot be reached now (Redis); try again")
        call_id = uuid.uuid4().hex
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = answer
        request = {"id": call_id, "from": self.node_id, "op": op, "args": args}
        try:
            listeners = await self._client.publish(PREFIX + "node." + node, json.dumps(request))
            if not listeners:
                raise Unavailable(f"node {node} is not running; try again")
            return await asyncio.wait_for(answer, CALL_TIMEOUT)
        except TimeoutError:
            raise Unavailable(f"node {node} did not answer within {CALL_TIMEOUT:.0f} s") from None
        except ApiError:  # (the other node's answer, or "not running")
            raise
        except Exception as exc:  # (the connection: Redis's errors, OS errors)
            raise Unavailable(f"the other nodes cannot be reached now (Redis): {exc}") from None
        finally:
            self._calls.pop(call_id, None)

    async def _answer(self, request: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply["result"] = await self._handle(str(request["op"]), dict(request["args"]))
        except ApiError as exc:
            reply["error"] = {
                "type": type(exc).__name__, "detail": exc.detail, "code": exc.code,
                "status": exc.status,
            }  # fmt: skip
        except Exception as exc:  # (a bug of ours: the caller gets a 503, the log the rest)
            log.exception("node_command_failed", op=request.get("op"))
            reply["error"] = {"type": "Unavailable", "detail": f"node error: {type(exc).__name__}"}
        self._outbox.put_nowait((PREFIX + "reply." + str(request["from"]), json.dumps(reply)))

    def _answered(self, reply: dict[str, Any]) -> None:
        pending = self._calls.get(str(reply.get("id")))
        if pending is None or pending.done():
            return
        if "error" in reply:
            pending.set_exception(api_error(reply["error"]))
        else:
            pending.set_result(reply.get("result"))

    # -- the connection -----------------------------------------------------------------------

    async def _listen(self) -> None:
        assert self._client is not None
        self._pubsub = self._client.pubsub()
        own = [PREFIX + "node." + self.node_id, PREFIX + "reply." + self.node_id]
        watched = [PREFIX + "events." + t for t in self._watching]
        for channel in watched:  # (confirmed again by this connection)
            if self._subscribed.get(channel) is None or self._subscribed[channel].done():
                self._subscribed[channel] = asyncio.get_running_loop().create_future()
        await self._pubsub.subscribe(*own, *watched)
        self.connected = True
        for task_id in list(self._watching):  # (watched while this subscribed)
            if PREFIX + "events." + task_id not in watched:
                self._spawn(self._subscribe(PREFIX + "events." + task_id))

    async def _subscribe(self, channel: str) -> None:
        try:
            await self._pubsub.subscribe(channel)
        except Exception as exc:  # (the reader sees the connection go, and resubscribes)
            log.warning("node_bus_subscribe_failed", error=str(exc))

    async def _unsubscribe(self, channel: str) -> None:
        if channel in self._subscribed:
            return  # (watched again meanwhile)
        with contextlib.suppress(Exception):
            await self._pubsub.unsubscribe(channel)

    async def _read_forever(self) -> None:
        delay = 0.05
        while True:
            if not self.connected:  # (Redis away: try again, less and less often)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                await self._reconnect()
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # (whatever the client raises, the connection is gone)
                await self._lost(exc)
                continue
            delay = 0.05
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if message["type"] == "subscribe":
            subscribed = self._subscribed.get(channel)
            if subscribed is not None and not subscribed.done():
                subscribed.set_result(None)
            return
        if message["type"] != "message":
            return
        try:
            body = json.loads(message["data"])
        except ValueError:
            return
        if channel.startswith(PREFIX + "events."):
            if body.get("node") != self.node_id:  # (this node's own reached its hub already)
                task_id = str(body["task"])
                self._deliver([Event(task_id, *row) for row in body["events"]])
        elif channel == PREFIX + "node." + self.node_id:
            self._spawn(self._answer(body))
        elif channel == PREFIX + "reply." + self.node_id:
            self._answered(body)

    async def _lost(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("node_bus_lost", redis=_where(self.url), error=str(exc))
        self.connected = False
        for pending in self._calls.values():
            if not pending.done():
                pending.set_exception(Unavailable("the other nodes cannot be reached now (Redis)"))

    async def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        try:
            await self._listen()
        except Exception:
            self.connected = False
            return
        log.info("node_bus_back", redis=_where(self.url), watched=len(self._watching))
        self._resync(list(self._watching))  # (what was published meanwhile: from the log)

    async def _send_forever(self) -> None:
        assert self._client is not None
        while True:
            channel, body = await self._outbox.get()
            for attempt in range(SEND_ATTEMPTS):  # (in order: the next waits for this one)
                try:
                    await self._client.publish(channel, body)
                    break
                except Exception as exc:  # (a stream that misses it re-reads the log)
                    log.debug("node_bus_publish_failed", error=str(exc), attempt=attempt)
                    await asyncio.sleep(0.1 * (attempt + 1))


def api_error(error: dict[str, Any]) -> ApiError:
    """The API error another node answered with, to raise again here (same class where this
    node knows it, same status, code and detail)."""
    from minidevin.runtime import errors

    kind = getattr(errors, str(error.get("type")), ApiError)
    if not (isinstance(kind, type) and issubclass(kind, ApiError)):
        kind = ApiError
    detail = str(error.get("detail", "error on another node"))
    status, code = error.get("status"), error.get("code")
    return kind(
        detail,
        code=str(code) if code else None,
        status=int(status) if isinstance(status, int) else None,
    )


def _where(url: str) -> str:
    """host:port of a Redis URL (never its password)."""
    rest = url.split("://", 1)[-1].rsplit("@", 1)[-1]
    return rest.split("/", 1)[0]
