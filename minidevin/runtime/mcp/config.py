"""A session's MCP servers as its body gives them (`mcp_servers`): stdio or streamable HTTP.

A server's tools reach the model as `mcp__<server>__<tool>`, which must stay within
the 64 characters providers accept: server names are short, of lower-case letters,
digits, `_` and `-`, and never hold `__` (the separator).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

from minidevin.runtime.variables import unsafe_name

TOOL_PREFIX = "mcp__"
SEPARATOR = "__"


def _no_separator(value: str) -> str:
    if SEPARATOR in value:
        raise ValueError(f"must not contain {SEPARATOR!r} (it separates server and tool)")
    return value


# (no `_` at the end either: `mcp__a___x` would be server `a_`'s tool `x` or `a`'s `_x`)
ServerName = Annotated[
    str,
    Field(pattern=r"^[a-z0-9]([a-z0-9_-]*[a-z0-9-])?$", max_length=24),
    AfterValidator(_no_separator),
]
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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


def _safe_env(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if not VARIABLE.fullmatch(name):
            raise ValueError(f"{name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if unsafe_name(name):
            raise ValueError(f"{name} cannot be set: it would change how programs start")
    return env


class McpStdioServer(_Server):
    """A server the runtime starts (in the command sandbox) and talks to over stdin/stdout."""

    transport: Literal["stdio"] = "stdio"
    command: Annotated[str, Field(min_length=1, max_length=4096)]
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=64)] = []
    env: Annotated[
        dict[str, Annotated[str, Field(max_length=16_384)]],
        Field(max_length=64),
        AfterValidator(_safe_env),
    ] = {}


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


HIDDEN_MIN = 8  # shorter `env` values (`1`, `true`, `prod`) are settings, not credentials


def hidden_values(servers: list[dict[str, Any]]) -> dict[str, str]:
    """The servers' `env` and `headers` values to mask like secrets (name -> value): each
    of `HIDDEN_MIN` characters or more, and a header's credential after its scheme
    (`Bearer <token>`) on its own too."""
    values: dict[str, str] = {}
    for server in servers:
        name = server.get("name", "?")
        for kind in ("env", "headers"):
            for key, value in (server.get(kind) or {}).items():
                parts = [value, value.rpartition(" ")[2]] if kind == "headers" else [value]
                for index, part in enumerate(parts):
                    if len(part) >= HIDDEN_MIN:
                        values[f"{name}.{kind}.{key}" + ("" if index == 0 else ".token")] = part
    return values
