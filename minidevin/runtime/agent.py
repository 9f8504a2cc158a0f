"""The agent's policy: its system prompt, the tools it may call, and its plan.

`plan`, `ask_user` and `finish` only change task state, so the TaskActor
handles them itself; `terminal` and `editor` execute in a ToolActor. A turn the
output-token limit cut off is no answer: its whole tool calls run, a call cut
mid-arguments gets `CUT_CALL_RESULT` instead of running, and the next turn
starts with `CONTINUE_MESSAGE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minidevin.runtime.instructions import Instructions
from minidevin.runtime.providers.base import CONTINUE_MESSAGE, ToolCall
from minidevin.runtime.tools import EditorTool, TerminalTool, ToolError, ToolResult, tool_schema

SYSTEM_PROMPT = """\
You are minidevin, an autonomous software engineer working in the repository at {cwd}.
Work step by step: first call `plan` with the steps you intend to take, keep the plan's
statuses up to date as you go, use `terminal` to run commands and `editor` to read and change
files (paths are relative to the working directory), check your work by running it, and call
`finish` with a short summary when you are done. Ask the user with `ask_user` only when you
cannot proceed without an answer."""

STEP_STATUSES = ("pending", "in_progress", "completed", "failed", "skipped")

PLAN_TOOL: dict[str, Any] = {
    "name": "plan",
    "description": "Set the plan: the whole list of steps with their status. Call it again "
    "with the full list whenever a step's status changes.",
    "parameters": {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "description": {"type": "string"},
                        "status": {"type": "string", "enum": list(STEP_STATUSES)},
                    },
                    "required": ["description"],
                },
            }
        },
        "required": ["steps"],
    },
}
ASK_USER_TOOL: dict[str, Any] = {
    "name": "ask_user",
    "description": "Ask the user a question and wait for the answer.",
    "parameters": {
        "type": "object",
        "properties": {"question": {"type": "string"}},
        "required": ["question"],
    },
}
FINISH_TOOL: dict[str, Any] = {
    "name": "finish",
    "description": "End the task with a summary of what was done and whether it succeeded.",
    "parameters": {
        "type": "object",
        "properties": {"summary": {"type": "string"}, "success": {"type": "boolean"}},
        "required": ["summary"],
    },
}
CONTROL_TOOLS = ("plan", "ask_user", "finish")
EXECUTING_TOOLS = ("terminal", "editor")


class _Spec:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name = spec["name"]
        self.description = spec["description"]
        self.parameters = spec["parameters"]


def tool_schemas() -> list[dict[str, Any]]:
    """Every tool the model may call, as Chat Completions `tools` entries."""
    tools: list[Any] = [TerminalTool(), EditorTool()]
    tools += [_Spec(spec) for spec in (PLAN_TOOL, ASK_USER_TOOL, FINISH_TOOL)]
    return [tool_schema(tool) for tool in tools]


def initial_messages(
    description: str, working_directory: Path, instructions: Instructions | None = None
) -> list[dict[str, Any]]:
    """The system prompt (with the repository's instructions, if any) and the task."""
    return [
        system_message(working_directory, instructions),
        {"role": "user", "content": description},
    ]


def system_message(
    working_directory: Path, instructions: Instructions | None = None
) -> dict[str, Any]:
    """The system prompt; the repository's instructions follow it under their own heading."""
    system = SYSTEM_PROMPT.format(cwd=working_directory)
    section = instructions.prompt_section() if instructions is not None else ""
    if section:
        system = f"{system}\n\n{section}"
    return {"role": "system", "content": system}


# -- a turn the output-token limit cut off (`ModelTurn.truncated`) ----------------------------

CUT_OFF_STATUS = "The model's reply was cut off by its output limit; asking it to continue"
CUT_CALL_RESULT = ToolResult(
    "Not run: the output limit cut this call off before its arguments were complete. "
    "Send it again, smaller (write a large file in several parts).",
    False,
)


def continue_message() -> dict[str, Any]:
    """The user message that asks the model to go on after a cut-off turn."""
    return {"role": "user", "content": CONTINUE_MESSAGE}


def final_summary(messages: list[dict[str, Any]]) -> str:
    """The final answer: the last assistant message's text, after the cut-off replies
    it continues (each one followed by `CONTINUE_MESSAGE` alone)."""
    parts: list[str] = []
    index = len(messages) - 1
    while index >= 0 and messages[index].get("role") == "assistant":
        message = messages[index]
        if message.get("tool_calls") or not isinstance(message.get("content"), str | None):
            break
        parts.insert(0, message.get("content") or "")
        if index < 2 or messages[index - 1] != continue_message():
            break
        index -= 2
    return "".join(parts).strip()


def is_cut_call(call: ToolCall) -> bool:
    """In a cut-off turn: the call's arguments are not a whole JSON object (never run it)."""
    try:
        return not isinstance(json.loads(call.arguments), dict)
    except json.JSONDecodeError:
        return True


def input_of(call: ToolCall) -> Any:
    """The call's arguments as the client sees them: the object, or the raw text."""
    try:
        value = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return call.arguments
    return value


def decode_arguments(raw: str) -> dict[str, Any]:
    """Tool arguments as a dict; `ToolError` with a correctable message otherwise."""
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ToolError(f"arguments are not valid JSON ({exc.msg}); send a JSON object") from None
    if not isinstance(value, dict):
        raise ToolError("arguments must be a JSON object")
    return value


def plan_from_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """`{"steps": [{id, description, status}]}`; step ids are `step-N` by position."""
    steps = arguments.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ToolError("plan needs 'steps': a non-empty list of {description, status}")
    plan = []
    for number, step in enumerate(steps, start=1):
        if isinstance(step, str):
            step = {"description": step}
        if not isinstance(step, dict) or not isinstance(step.get("description"), str):
            raise ToolError(f"step {number} needs a 'description' string")
        status = step.get("status", "pending")
        if status not in STEP_STATUSES:
            raise ToolError(f"step {number} status must be one of {', '.join(STEP_STATUSES)}")
        plan.append({"id": f"step-{number}", "description": step["description"], "status": status})
    return {"steps": plan}


def finish_from_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    summary = arguments.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise ToolError("finish needs a non-empty 'summary' string")
    success = arguments.get("success", True)
    if not isinstance(success, bool):
        raise ToolError("finish 'success' must be true or false")
    return {"success": success, "summary": summary}


def question_from_arguments(arguments: dict[str, Any]) -> str:
    question = arguments.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ToolError("ask_user needs a non-empty 'question' string")
    return question
