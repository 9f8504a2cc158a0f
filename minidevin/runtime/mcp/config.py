"""A session's MCP servers as its body gives them (`mcp_servers`): stdio or streamable HTTP.

A server's tools reach the model as `mcp__<server>__<tool>`, which must stay within
the 64 characters providers accept: server names are short, of lower-case letters,
digits, `_` and `-`, and never hold `__` (the separator).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

TOOL_PREFIX = "mcp__"
SEPARATOR = "__"


def _no_separator(value: str) -> str:
    if SEPARATOR in value:
        raise ValueError(f"must not contain {SEPARATOR!r} (it separates server and tool)")
    return value


ServerName = Annotated[
    str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=24), AfterValidator(_no_separator)
]
HIDDEN = "<hidden>"  # what the API shows of an `env` or `headers` value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: ServerName

    def shown(self) -> dict[str, Any]:
        """The server as the API shows it: values of `env` and `headers` hidden."""
        data = self.model_dump()
        for key in ("env", "headers"):
            if key in data:
                data[key] = {name: HIDDEN for name in data[key]}
        return data


class McpStdioServer(_Server):
    """A server the runtime starts (in the command sandbox) and talks to over stdin/stdout."""

    transport: Literal["stdio"] = "stdio"
    command: Annotated[str, Field(min_length=1, max_length=4096)]
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=64)] = []
    env: Annotated[dict[str, Annotated[str, Field(max_length=16_384)]], Field(max_length=64)] = {}


class McpHttpServer(_Server):
    """A server already listening, reached over MCP's streamable HTTP transport."""

    transport: Literal["http"] = "http"
    url: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_http_url)]
    headers: Annotated[
        dict[str, Annotated[str, Field(max_length=16_384)]], Field(max_length=32)
    ] = {}


def _transport(value: Any) -> str:
    if isinstance(value, dict):
        return "http" if "url" in value else "stdio"
    return "http" if isinstance(value, McpHttpServer) else "stdio"


# by its keys: `url` makes an HTTP server, anything else is judged as stdio
McpServer = Annotated[
    Annotated[McpStdioServer, Tag("stdio")] | Annotated[McpHttpServer, Tag("http")],
    Discriminator(_transport),
]


def parse_servers(raw: list[dict[str, Any]]) -> list[McpServer]:
    """Stored configurations (`model_dump()`s) back as models."""
    return [
        McpHttpServer.model_validate(item) if "url" in item else McpStdioServer.model_validate(item)
        for item in raw
    ]


def tool_name(server: str, tool: str) -> str:
    return f"{TOOL_PREFIX}{server}{SEPARATOR}{tool}"
