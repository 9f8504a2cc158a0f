"""The tools an agent can call (see `registry` for the one list of them), and `run_tool`,
which executes one model tool call on a tool instance."""

from __future__ import annotations

from minidevin.runtime.tools.base import (
    Tool,
    ToolArguments,
    ToolContext,
    ToolError,
    ToolResult,
    decode_object,
    settle,
    tool_schema,
)
from minidevin.runtime.tools.editor import EditorTool
from minidevin.runtime.tools.registry import TOOLS, ToolRegistry, ToolSpec
from minidevin.runtime.tools.terminal import TerminalTool

__all__ = [
    "TOOLS",
    "EditorTool",
    "TerminalTool",
    "Tool",
    "ToolArguments",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "run_tool",
    "tool_schema",
]


def run_tool(tool: Tool, raw_arguments: str | None, context: ToolContext) -> ToolResult:
    """Decode the model's JSON arguments and run `tool`, always returning a result.

    Bad JSON, a non-object, arguments its model refuses, refusals (`ToolError`) and
    crashes become failed results the model can read; only `Cancelled` propagates.
    (`ToolRegistry.execute` does the same for a call by name.)
    """

    def call() -> ToolResult:
        arguments = decode_object(raw_arguments, tool.name)
        model = getattr(tool, "arguments", None)
        return tool.run(model.of(arguments, tool.name) if model else arguments, context)

    return settle(call)
