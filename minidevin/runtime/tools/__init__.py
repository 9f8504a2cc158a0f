"""The tools an agent can call, and `run_tool`, which executes one model tool call."""

from __future__ import annotations

import json

from minidevin.runtime.cancel import Cancelled
from minidevin.runtime.tools.base import Tool, ToolContext, ToolError, ToolResult, tool_schema
from minidevin.runtime.tools.editor import EditorTool
from minidevin.runtime.tools.terminal import TerminalTool

__all__ = [
    "EditorTool",
    "TerminalTool",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolResult",
    "run_tool",
    "tool_schema",
]


def run_tool(tool: Tool, raw_arguments: str, context: ToolContext) -> ToolResult:
    """Decode the model's JSON arguments and run `tool`, always returning a result.

    Bad JSON, refusals (`ToolError`) and crashes become failed results the model
    can read; only `Cancelled` propagates.
    """
    if raw_arguments is None or not raw_arguments.strip():
        arguments: object = {}
    else:
        try:
            arguments = json.loads(raw_arguments)
        except (json.JSONDecodeError, TypeError) as exc:
            return ToolResult(
                output=f"invalid arguments for tool {tool.name!r}: not valid JSON ({exc}). "
                "Call the tool again with the arguments as a single JSON object.",
                success=False,
            )
    if not isinstance(arguments, dict):
        return ToolResult(
            output=f"invalid arguments for tool {tool.name!r}: expected a JSON object, got "
            f"{type(arguments).__name__}. Call the tool again with a JSON object.",
            success=False,
        )
    try:
        return tool.run(arguments, context)
    except Cancelled:
        raise
    except ToolError as exc:
        return ToolResult(output=str(exc), success=False)
    except Exception as exc:
        return ToolResult(output=f"tool crashed: {type(exc).__name__}: {exc}", success=False)
