"""What every tool is: a JSON schema the model sees plus an executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from minidevin.runtime.cancel import CancelToken


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call, as the model and the WebSocket client see it."""

    output: str
    success: bool


class ToolError(Exception):
    """A tool call the tool refuses (bad arguments, path outside the workspace...).

    Becomes a `ToolResult(success=False)` whose output is this message, so the
    model can correct itself.
    """


@dataclass
class ToolContext:
    """What a tool executor may use: the workspace, the task's cancel token, limits.

    With `sandbox`, terminal commands run under bubblewrap (see `sandbox.wrap`):
    without network unless `network`, and with `hidden_paths` (the server's data
    directory) covered by an empty tmpfs.
    """

    working_directory: Path
    cancel: CancelToken = field(default_factory=CancelToken)
    default_timeout: float = 120.0
    max_timeout: float = 1800.0
    output_limit: int = 16_000
    env: dict[str, str] | None = None
    sandbox: bool = False
    network: bool = True
    hidden_paths: tuple[Path, ...] = ()
    # the working directory's (st_dev, st_ino) as checked when the session was created:
    # re-checked before every call, so a directory swapped for a link is refused
    workspace_identity: tuple[int, int] | None = None
    # who commands (and the editor's file writes) run as; None: the server's own uid
    uid: int | None = None
    gid: int | None = None
    task_id: str = ""
    memory_mb: int = 2048
    pids: int = 256
    cpus: float = 1.0
    tmp_mb: int = 512
    read_paths: tuple[Path, ...] = ()
    # the server's data directory: names the cgroups of its commands (see cgroups.py)
    data_dir: Path | None = None


class Tool(Protocol):
    """A tool: `name`, `description`, `parameters` (JSON schema), and `run`.

    `run` executes one call with already-decoded arguments. It may raise
    `ToolError` for refusals; any other exception is a crash that the caller
    turns into a failed result.
    """

    name: str
    description: str
    parameters: dict[str, Any]

    def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult: ...


def tool_schema(tool: Tool) -> dict[str, Any]:
    """The tool as an OpenAI Chat Completions `tools` entry."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }
