"""The TaskActor's own tools (`plan`, `finish`) and its MCP servers' coming and going."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minidevin.runtime import event_types as ev
from minidevin.runtime.event_types import EventBody
from minidevin.runtime.mcp.config import tool_name
from minidevin.runtime.providers.base import ToolCall
from minidevin.runtime.tools import ToolError, ToolResult
from minidevin.runtime.tools.registry import ToolRegistry


class TaskTools:
    """A mixin of `TaskActor`, whose state it uses."""

    registry: ToolRegistry
    tools: tuple[dict[str, Any], ...]
    pending_calls: Any

    # the TaskActor's (declared, not defined: a definition here could shadow theirs)
    _emit: Callable[[EventBody], bool]
    _end: Callable[..., None]

    def _control_tool(self, call: ToolCall) -> ToolResult:
        """`plan`, `finish`, or a failed result (bad arguments, an unknown tool)."""
        try:
            arguments = self.registry.parse(call.name, call.arguments)
        except ToolError as exc:
            return ToolResult(str(exc), False)
        if call.name == "finish":
            self.pending_calls.clear()
            self._end("completed", result=arguments.result())
            return ToolResult("Task finished.", True)
        if call.name == "plan":
            plan = arguments.to_plan()
            self._emit(ev.PlanUpdate.model_validate({"plan": plan}))
            return ToolResult(f"Plan updated ({len(plan['steps'])} steps).", True)
        return ToolResult(f"tool {call.name!r} is not available to this task", False)

    def _mcp_failed(self, problems: tuple[tuple[str, str], ...]) -> None:
        """Say which MCP servers failed; the task goes on without their tools."""
        for server, why in problems:
            self._emit(ev.Error(error=f"MCP server {server!r}: {why}", code="MCP_SERVER_FAILED"))
            prefix = tool_name(server, "")
            self.tools = tuple(t for t in self.tools if not _named(t).startswith(prefix))


def _named(tool: dict[str, Any]) -> str:
    return str(tool["function"]["name"])
