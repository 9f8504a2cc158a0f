"""This node among others: where a session runs, and API calls forwarded to its node.

With `MINIDEVIN_REDIS_URL` (and a shared PostgreSQL database), any node answers
any request. Reads are the database's. A session runs on one node, the one that
created it (its working directory is there): the placement is kept in Redis
(`minidevin.placement`, session id -> node id, set once). A call that must
reach a session's actors (create, resume, stop, answer, approve a task; delete
the session; list its tools) is forwarded whole to that node through the node
bus (`runtime/bus.py`) when it is elsewhere, and its answer (or API error)
comes back as that node gave it. A forwarded call always runs where it arrives,
so two nodes that disagree cannot bounce a call between them.

Besides the runtime's operations, one command is the nodes' own: `take_over`
(a node shutting down gracefully asks a live one to take its sessions over
now, `leases.Leases.hand_over`). A node shutting down answers no command.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from minidevin.runtime import schemas
from minidevin.runtime.bus import NodeBus
from minidevin.runtime.errors import NotFound, Unavailable, ValidationFailed
from minidevin.runtime.events import Event
from minidevin.runtime.storage import StoreError

if TYPE_CHECKING:
    from minidevin.api import Runtime

NODES = "minidevin.nodes"  # every node id that joined
LOCAL = object()  # (the session runs here: go on)
_forwarded: contextvars.ContextVar[bool] = contextvars.ContextVar("forwarded", default=False)
# what each forwarded call answers with (None: nothing, or a plain value)
RESULTS: dict[str, type[BaseModel] | None] = {
    "create_session": schemas.SessionCreated,
    "create_task": schemas.TaskCreated,
    "resume_task": schemas.TaskDetail,
    "stop_task": schemas.TaskStopped,
    "send_input": None,
    "decide_approval": schemas.ApprovalDecided,
    "delete_session": None,
    "session_tools": schemas.SessionTools,
    "take_over": None,  # (the nodes' own: how many sessions stay on the node taken over)
}


class Nodes:
    """The runtime's view of the other nodes (only with a node bus)."""

    def __init__(self, runtime: Runtime, bus: NodeBus) -> None:
        self.runtime = runtime
        self.bus = bus
        self.node_id = bus.node_id
        self.closing = False  # (a graceful shutdown: no command runs here any more)
        # (set once the node holds its lease and generation and has settled what its last
        # process left: a command run before that would be neither fenced nor recovered)
        self.ready = False

    async def node_of(self, session_id: str) -> str:
        """The node the session runs on now (a session on none becomes this node's)."""
        store = self.runtime.store
        exists, node = await store.session_node(session_id)
        if not exists:
            return self.node_id  # (refused as missing where it is looked up)
        if node is None:  # (older than nodes, or copied in: the first node to ask)
            node = await store.place_session(session_id, self.node_id, None)
        return node or self.node_id

    async def elsewhere(self, session_id: str, op: str, /, **args: Any) -> Any:
        """`LOCAL` if the session runs here (or this call was forwarded here); else the
        answer of its node, which ran `op` with `args`."""
        if _forwarded.get():
            return LOCAL
        node = await self.node_of(session_id)
        if node == self.node_id:
            return LOCAL
        try:
            answer = await self.bus.call(node, op, args)
        except Unavailable:
            leases = self.runtime.leases
            if self.runtime.settings.shared_workspaces and leases is not None:
                with contextlib.suppress(Exception):  # (Redis away: nobody can tell)
                    await leases.watch_gone(node)  # (any node may take it over)
            raise
        result_type = RESULTS[op]
        return answer if result_type is None or answer is None else result_type(**answer)

    async def create_session_on(self, node: str, **args: Any) -> schemas.SessionCreated:
        """A session created by `node` (its working directory is checked, and runs, there)."""
        if not await self.bus.client.sismember(NODES, node):
            raise ValidationFailed(f"node: no node {node} has joined")
        answer = await self.bus.call(node, "create_session", args)
        return schemas.SessionCreated(**answer)

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        """A call another node forwarded: run it here, as it would have run there."""
        if op not in RESULTS:
            raise NotFound(f"no such node command: {op}")
        if self.closing:
            raise Unavailable(f"node {self.node_id} is shutting down; try again")
        if not self.ready:
            raise Unavailable(f"node {self.node_id} is starting; try again")
        if op == "take_over":
            assert self.runtime.leases is not None
            return await self.runtime.leases.take_over_now(str(args["node"]))
        method = getattr(self.runtime, op)
        token = _forwarded.set(True)
        try:
            if op == "create_task":
                request = schemas.TaskRequest(**args.pop("request"))
                result = await method(args.pop("session_id"), request, **args)
            elif op == "create_session":
                servers = schemas.MCP_SERVERS.validate_python(args.pop("mcp_servers") or [])
                result = await method(**args, mcp_servers=servers)
            elif op == "resume_task":
                request = schemas.ResumeRequest(**args.pop("request"))
                result = await method(args.pop("task_id"), request, **args)
            else:
                result = await method(**args)
        finally:
            _forwarded.reset(token)
        return result.model_dump(mode="json") if isinstance(result, BaseModel) else result


async def join_nodes(runtime: Runtime) -> None:
    """Connect this runtime to the other nodes (`MINIDEVIN_REDIS_URL`); `StoreError` saying
    why it cannot."""
    settings = runtime.settings
    assert settings.redis_url is not None
    if settings.database_url is None:
        raise StoreError(
            "MINIDEVIN_REDIS_URL needs MINIDEVIN_DATABASE_URL: nodes share one PostgreSQL database"
        )

    async def handle(op: str, args: dict[str, Any]) -> Any:
        assert runtime.nodes is not None
        return await runtime.nodes.handle(op, args)

    # other nodes' events: to this node's streams, and (a status) a wake-up of its webhooks
    deliver = runtime.webhooks.watching(runtime.hub.publish) if runtime.webhooks else None
    bus = NodeBus(settings.redis_url, settings.node_id, deliver or runtime.hub.publish, handle,
                  runtime.hub.resync)  # fmt: skip
    try:
        await bus.start()
    except Unavailable as exc:
        raise StoreError(exc.detail) from None
    runtime.nodes = Nodes(runtime, bus)
    runtime.accounts.cached = False  # (credentials changed on another node hold here at once)
    from minidevin.leases import Leases  # (it uses this module)

    runtime.leases = Leases(runtime, runtime.nodes)
    await runtime.leases.start()  # (before this node settles its sessions' tasks)
    if runtime.webhooks is not None:
        runtime.webhooks.delivers_here = runtime.leases.leads
    runtime.hub.watcher = bus
    committed = runtime.store.on_events_committed

    def published(events: list[Event]) -> None:  # here first, then to the other nodes
        committed(events)
        bus.publish(events)

    runtime.store.on_events_committed = published
