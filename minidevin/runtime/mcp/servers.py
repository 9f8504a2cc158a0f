"""A task's connections to its session's MCP servers, and their tools as ours.

`McpTools` is used from a pykka actor's thread and never blocks an event loop of
the caller: the `mcp` SDK's asyncio runs in one private event-loop thread per
`McpTools`, where each server has one task that holds its connection from start
to stop (stdio: see `stdio.py`; streamable HTTP: the SDK's client, after the
URL's addresses were checked). A server's tools are `mcp__<server>__<tool>`
with the schema the server declares.

A server that fails to start, dies, or lets a call time out is marked failed:
its tools answer with a failed result saying why, and the failure is reported
once (`start()` for a start, `take_problems()` afterwards).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types
import structlog
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from minidevin.runtime.cancel import Cancelled
from minidevin.runtime.mcp.config import McpHttpServer, McpServer, McpStdioServer, parse_servers
from minidevin.runtime.mcp.config import tool_name as mcp_tool_name
from minidevin.runtime.mcp.stdio import REAP_WAIT, StdioServerProcess
from minidevin.runtime.tools.base import ToolContext, ToolResult
from minidevin.runtime.tools.registry import TOOL_NAME, ToolRegistry, external_arguments
from minidevin.runtime.webhooks import refused_address

log = structlog.get_logger(__name__)

CLOSE_WAIT = 1.5  # how long close() lets the servers stop before cancelling what is left
MAX_PAGES = 50  # of a tools/list answer
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
RESOLVE_TIMEOUT = 10.0


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


class AddressRefused(ConnectionError):
    """An HTTP server's host resolves to an address the runtime may not call."""


class _Connection:
    """One server's connection; lives on the `McpTools` loop (its `run` task holds it)."""

    def __init__(self, owner: McpTools, server: McpServer) -> None:
        self.owner = owner
        self.server = server
        self.name = server.name
        self.session: ClientSession | None = None
        self.process: StdioServerProcess | None = None
        self.tools: list[mcp_types.Tool] = []
        self.failure: str | None = None
        self.seconds: float | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stop = anyio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Connect, list the tools, then hold the connection until stopped or dead."""
        started = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self.tools = await _list_tools(session)
                self.session, self.seconds = session, time.monotonic() - started
                log.info(
                    "mcp_server_started",
                    server=self.name,
                    seconds=round(self.seconds, 3),
                    tools=len(self.tools),
                )
                _settle(self.ready)
                await self._until_stopped_or_ended()
                if self.process is not None and self.process.ended.is_set():
                    self.fail(f"the server {self.process.why_ended('while idle')}")
        except Exception as exc:
            self.fail(await self._explain(exc, "while starting" if self.session is None else ""))
        finally:
            self.session = None
            _settle(self.ready)

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> ToolResult:
        session = self.session
        if session is None or self.failure is not None:
            return self.unavailable()
        try:
            with anyio.fail_after(timeout):
                result = await session.call_tool(tool, arguments)
        except TimeoutError:
            why = f"the call of {tool!r} timed out after {timeout:g} s; the server was stopped"
            self.fail(why)
            self.stop.set()
            return ToolResult(f"MCP server {self.name!r}: {why}", success=False)
        except MCPError as exc:
            alive = self.process is None or not self.process.ended.is_set()
            if exc.code != mcp_types.CONNECTION_CLOSED and alive:
                return ToolResult(f"MCP server {self.name!r}: {exc.message}", success=False)
            self.fail(await self._explain(exc, "during a call"))
            return self.unavailable()
        except Exception as exc:
            self.fail(await self._explain(exc, "during a call"))
            return self.unavailable()
        return _as_result(result, self.owner.output_limit)

    def unavailable(self) -> ToolResult:
        why = self.failure or "it is not connected"
        return ToolResult(f"MCP server {self.name!r} is not available: {why}", success=False)

    def fail(self, message: str) -> None:
        self.owner._failed(self, message)

    async def _until_stopped_or_ended(self) -> None:
        async with anyio.create_task_group() as waiting:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(until, self.stop)
            if self.process is not None:
                waiting.start_soon(until, self.process.ended)

    async def _explain(self, exc: BaseException, when: str) -> str:
        """A sentence for the failure: the process's end when it is gone, else the error."""
        exc = _leaf(exc)
        if self.process is not None and self.process.pid is not None:
            with anyio.move_on_after(REAP_WAIT):
                await self.process.ended.wait()
            if self.process.ended.is_set():
                return f"the server {self.process.why_ended(when)}"
        if isinstance(exc, AddressRefused):
            return str(exc)
        if isinstance(exc, OSError) and isinstance(self.server, McpStdioServer):
            return f"cannot run {self.server.command!r}: {exc.strerror or exc}"
        text = str(exc) or type(exc).__name__
        if isinstance(self.server, McpHttpServer):
            text = f"{_shown_url(self.server.url)}: {text}"
        return f"{text} ({when})" if when else text

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        server = self.server
        if isinstance(server, McpStdioServer):
            self.process = StdioServerProcess(server, self.owner.context)
            async with self.process.connect() as streams:
                yield streams
            return
        assert isinstance(server, McpHttpServer)
        await _check_address(server.url, self.owner.allow_private)
        async with (
            httpx2.AsyncClient(headers=dict(server.headers), timeout=HTTP_TIMEOUT) as client,
            streamable_http_client(server.url, http_client=client) as streams,
        ):
            yield streams


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
        self._connections: list[_Connection] = []
        self._tools: dict[str, tuple[_Connection, McpToolInfo]] = {}
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
        self._connections = [_Connection(self, server) for server in self.servers]
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

    def _failed(self, connection: _Connection, message: str) -> None:
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


# -- helpers ------------------------------------------------------------------------------------


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


async def _check_address(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host resolves to a private, loopback or link-local address."""
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise AddressRefused(f"the host {host!r} does not resolve: {exc}") from None
    for *_, address in infos:
        why = refused_address(str(address[0]))
        if why is not None:
            raise AddressRefused(
                f"refused to connect to {_shown_url(url)}: {why} "
                "(allowed only with the mcp_allow_private setting)"
            )


def _shown_url(url: str) -> str:
    """The URL without its query (which may carry a key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _as_result(result: mcp_types.CallToolResult, limit: int) -> ToolResult:
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{block.type} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, default=str))
    output = "\n".join(parts)
    if len(output) > limit > 0:
        half = limit // 2
        omitted = len(output) - 2 * half
        output = f"{output[:half]}\n[... {omitted} characters omitted ...]\n{output[-half:]}"
    return ToolResult(output, success=not result.is_error)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups of the SDK's task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
