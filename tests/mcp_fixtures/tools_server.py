"""A small MCP server for the tests, over stdio (default) or streamable HTTP.

`python tools_server.py` serves on stdin/stdout; `python tools_server.py http` serves
streamable HTTP at `/mcp` on a free port of 127.0.0.1, which it prints first.
Its tools: `add`, `echo_env` (proves the environment arrives), `where` (the working
directory), `uid`, `fail` (an error result), `slow` (sleeps), `die` (ends the process).
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("fixture")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def echo_env(name: str) -> str:
    """The value of environment variable `name` (or `<unset>`)."""
    return os.environ.get(name, "<unset>")


@server.tool()
def where() -> str:
    """The server's working directory."""
    return os.getcwd()


@server.tool()
def fail(reason: str = "it failed") -> str:
    """Always raises: an error result."""
    raise ToolError(reason)


@server.tool()
def uid() -> str:
    """The uid the server runs as."""
    return str(os.getuid())


@server.tool()
def slow(seconds: float, mark: str = "") -> str:
    """Sleep `seconds`, then answer; first create the file `mark` (when given)."""
    if mark:
        with open(mark, "w"):
            pass
    time.sleep(seconds)
    return "woke"


@server.tool()
def die() -> str:
    """End the server process at once (a crash)."""
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1:] == ["http"]:
        import socket

        import uvicorn

        listener = socket.create_server(("127.0.0.1", 0))
        print(listener.getsockname()[1], flush=True)  # the port, for the test
        config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
        uvicorn.Server(config).run(sockets=[listener])
    else:
        print("fixture server starting", file=sys.stderr)
        server.run()
