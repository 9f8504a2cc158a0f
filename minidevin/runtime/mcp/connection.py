"""One MCP server's connection, held on the `McpTools` loop from start to stop.

stdio: the process of `stdio.py`; streamable HTTP: the SDK's client, after the URL's
addresses were checked (private, loopback and link-local ones are refused unless
allowed). A call's text content is its output; an error result is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types
import structlog
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from minidevin.runtime.mcp.config import McpHttpServer, McpServer, McpStdioServer
from minidevin.runtime.mcp.stdio import REAP_WAIT, StdioServerProcess
from minidevin.runtime.tools.base import ToolResult
from minidevin.runtime.webhooks import refused_address

if TYPE_CHECKING:
    from minidevin.runtime.mcp.servers import McpTools

log = structlog.get_logger(__name__)

MAX_PAGES = 50  # of a tools/list answer
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
RESOLVE_TIMEOUT = 10.0


class AddressRefused(ConnectionError):
    """An HTTP server's host resolves to an address the runtime may not call."""


class McpConnection:
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
        return _as_result(result, self.owner.output_limit, self.owner.context.redactor)

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
        host, address = await _check_address(server.url, self.owner.allow_private)
        pinned = PinnedTransport(host, address)  # (the name is not looked up again)
        async with (
            httpx2.AsyncClient(
                headers=dict(server.headers), timeout=HTTP_TIMEOUT, transport=pinned
            ) as client,
            streamable_http_client(server.url, http_client=client) as streams,
        ):
            yield streams


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


async def _check_address(url: str, allow_private: bool) -> tuple[str, str]:
    """The URL's host and the address to connect to: its first, once every address it
    resolves to was checked (private, loopback and link-local ones refused unless
    allowed)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise AddressRefused(f"the host {host!r} does not resolve: {exc}") from None
    if not allow_private:
        for *_, address in infos:
            why = refused_address(str(address[0]))
            if why is not None:
                raise AddressRefused(
                    f"refused to connect to {_shown_url(url)}: {why} "
                    "(allowed only with the mcp_allow_private setting)"
                )
    return host, str(infos[0][4][0])


class PinnedTransport(httpx2.AsyncBaseTransport):
    """Sends the requests for `host` to `address`, the one that was checked: a name that
    resolves elsewhere after the check (DNS rebinding) cannot turn a call inward. TLS
    still verifies the certificate against `host`."""

    def __init__(self, host: str, address: str) -> None:
        self.host, self.address = host, address
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.host == self.host and self.host != self.address:
            request.extensions["sni_hostname"] = self.host
            request.url = request.url.copy_with(host=self.address)  # (Host: stays the name)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _shown_url(url: str) -> str:
    """The URL without its query (which may carry a key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _as_result(result: mcp_types.CallToolResult, limit: int, redactor: Any = None) -> ToolResult:
    """The call's text content (cut in the middle past `limit`; a secret's value cut in
    two there is trimmed, so no part of it stays unmasked) and whether it succeeded."""
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{block.type} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, default=str))
    output = "\n".join(parts)
    if len(output) > limit > 0:
        half = limit // 2
        head, tail = output[:half], output[-half:]
        if redactor is not None:
            head, tail = redactor.trim_cut(head, tail)
        omitted = len(output) - len(head) - len(tail)
        output = f"{head}\n[... {omitted} characters omitted ...]\n{tail}"
    return ToolResult(output, success=not result.is_error)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups of the SDK's task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
