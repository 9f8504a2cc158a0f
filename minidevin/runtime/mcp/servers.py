"""A task's connections to its session's MCP servers, and their tools as ours.

`McpTools` is used from a pykka actor's thread and never blocks an event loop of
the caller: the `mcp` SDK's asyncio runs in one private event-loop thread per
`McpTools`, where each server has one task that holds its connection from start
to stop (stdio: see `stdio.py`; streamable HTTP: the SDK's client, after the
URL's addresses were checked; see `connection.py`). A server's tools are `mcp__<server>__<tool>`
with the schema the server declares.

A server that fails to start, dies, or lets a call time out is marked failed:
its tools answer with a failed result saying why, and the failure is reported
once (`start()` for a start, `take_problems()` afterwards).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from minidevin.runtime.cancel import Cancelled
from minidevin.runtime.mcp.config import McpServer, parse_servers
from minidevin.runtime.mcp.config import tool_name as mcp_tool_name
from minidevin.runtime.mcp.connection import McpConnection
from minidevin.runtime.mcp.stdio import REAP_WAIT
from minidevin.runtime.tools.base import ToolContext, ToolResult
from minidevin.runtime.tools.registry import TOOL_NAME, ToolRegistry, external_arguments

log = structlog.get_logger(__name__)

CLOSE_WAIT = 1.5  # how long close() lets the servers stop before cancelling what is left


@dataclass(frozen=True)
class McpToolInfo:
    """One tool of an MCP server, as the model sees it (`name`) and the server knows it."""

    name: str  # mcp__<server>__<tool>
    server: str
    tool: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class McpProblem:
    """What went wrong with one server (a failed start, a death, a timeout, a skipped tool)."""

    server: str
    message: str


class McpTools:
    """The MCP servers of one task: started together, their tools called, stopped with it."""

    def __init__(
        self,
        servers: Sequence[McpServer | dict[str, Any]],
        context: ToolContext,
        *,
        start_timeout: float,
        allow_private: bool,
    ) -> None:
        self.servers: list[McpServer] = [
            parse_servers([item])[0] if isinstance(item, dict) else item for item in servers
        ]
        self.context = context
        self.start_timeout = start_timeout
        self.allow_private = allow_private
        self.output_limit = context.output_limit
        self._lock = threading.Lock()
        self._connections: list[McpConnection] = []
        self._tools: dict[str, tuple[McpConnection, McpToolInfo]] = {}
        self._problems: list[McpProblem] = []
        self._start_done = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- start -----------------------------------------------------------------------------

    def start(self) -> list[McpProblem]:
        """Start every server at once; the ones that failed (within `start_timeout` in all).

        Tools skipped for a name or schema that cannot be used are problems too.
        Raises `Cancelled` when the task is stopped meanwhile.
        """
        with self._lock:
            if self._loop is not None or self._closed:
                return []
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mcp-servers", daemon=True
        )
        self._thread.start()
        begun = time.monotonic()
        self._wait(self._start_all(), self.context)
        with self._lock:
            self._start_done = True
            problems = [McpProblem(c.name, c.failure) for c in self._connections if c.failure]
        seconds = round(time.monotonic() - begun, 3)
        log.info(
            "mcp_servers_ready", seconds=seconds, servers=len(self.servers), failed=len(problems)
        )
        return problems + self._collect_tools()

    async def _start_all(self) -> None:
        self._connections = [McpConnection(self, server) for server in self.servers]
        for connection in self._connections:
            connection.task = asyncio.create_task(connection.run())
        if not self._connections:
            return
        readies = [connection.ready for connection in self._connections]
        await asyncio.wait(readies, timeout=self.start_timeout)
        for connection in self._connections:
            if not connection.ready.done():
                connection.fail(f"did not start within {self.start_timeout:g} s")
                assert connection.task is not None
                connection.task.cancel()

    def _collect_tools(self) -> list[McpProblem]:
        problems = []
        for connection in self._connections:
            if connection.failure is not None:
                continue
            for tool in connection.tools:
                name = mcp_tool_name(connection.name, tool.name)
                schema = dict(tool.input_schema or {"type": "object"})
                why = None
                if not TOOL_NAME.fullmatch(name):
                    why = f"{name!r} is not 1-64 letters, digits, '_' or '-'"
                elif name in self._tools:
                    why = f"{name!r} is declared twice"
                else:
                    try:
                        external_arguments(name, schema)
                    except ValueError as exc:
                        why = str(exc)
                if why is not None:
                    message = f"tool {tool.name!r} left out: {why}"
                    problems.append(McpProblem(connection.name, message))
                    continue
                description = tool.description or f"{tool.name} (MCP server {connection.name})"
                info = McpToolInfo(name, connection.name, tool.name, description, schema)
                self._tools[name] = (connection, info)
        return problems

    @property
    def tools(self) -> list[McpToolInfo]:
        """The tools of the servers that are up."""
        return [info for connection, info in self._tools.values() if connection.failure is None]

    @property
    def start_seconds(self) -> dict[str, float]:
        """How long each server that came up took to start and list its tools."""
        return {c.name: c.seconds for c in self._connections if c.seconds is not None}

    def register(self, registry: ToolRegistry) -> None:
        """Add every tool to `registry`; one that cannot be added becomes a problem."""
        for info in self.tools:

            def run(
                arguments: dict[str, Any], context: ToolContext, name: str = info.name
            ) -> ToolResult:
                return self.call(name, arguments, context)

            try:
                registry.register_external(info.name, info.description, info.input_schema, run)
            except ValueError as exc:
                with self._lock:
                    self._problems.append(McpProblem(info.server, f"tool left out: {exc}"))

    # -- calls ------------------------------------------------------------------------------

    def call(self, name: str, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Call one tool; its text content is the output, an error result is a failure.

        A timeout (`context.default_timeout`) or a dead server is a failed result saying
        why (and the server is marked failed); raises `Cancelled` when the task stops.
        """
        found = self._tools.get(name)
        if found is None:
            return ToolResult(f"unknown MCP tool {name!r}", success=False)
        connection, info = found
        if connection.failure is not None or self._closed:
            return connection.unavailable()
        context.cancel.raise_if_set()
        coroutine = connection.call(info.tool, arguments, context.default_timeout)
        result = self._wait(coroutine, context)
        return result if result is not None else connection.unavailable()

    def _wait(self, coroutine: Any, context: ToolContext) -> Any:
        """Run `coroutine` on the loop and wait for it; `Cancelled` when the task stops."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        unregister = context.cancel.on_cancel(future.cancel)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if context.cancel.is_set():
                raise Cancelled() from None
            return None
        finally:
            unregister()

    def take_problems(self) -> list[McpProblem]:
        """The problems found since the last call (deaths, timeouts), each once."""
        with self._lock:
            problems, self._problems = self._problems, []
        return problems

    def _failed(self, connection: McpConnection, message: str) -> None:
        with self._lock:
            if connection.failure is not None:
                return
            connection.failure = message
            if self._start_done:
                self._problems.append(McpProblem(connection.name, message))
        log.warning("mcp_server_failed", server=connection.name, reason=message)

    # -- stop -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every server (stdio: its whole process group) and HTTP session; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._close_all(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=CLOSE_WAIT + 2 * REAP_WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=REAP_WAIT)
        if future.done() and not thread.is_alive():  # else a late worker may still call in
            loop.close()

    async def _close_all(self) -> None:
        for connection in self._connections:
            connection.stop.set()
        tasks = [c.task for c in self._connections if c.task is not None and not c.task.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=REAP_WAIT)


def list_tools(
    servers: Sequence[McpServer | dict[str, Any]],
    context: ToolContext,
    *,
    start_timeout: float,
    allow_private: bool,
) -> tuple[list[McpToolInfo], list[McpProblem]]:
    """Start the servers, list their tools, stop them (what a session's tool list shows)."""
    mcp = McpTools(servers, context, start_timeout=start_timeout, allow_private=allow_private)
    try:
        problems = mcp.start()
        return mcp.tools, problems
    finally:
        mcp.close()
