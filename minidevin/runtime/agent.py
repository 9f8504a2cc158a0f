"""The agent's policy: its system prompt, the tools it may call, and its plan.

The tools are declared in `tools.registry`: `plan`, `ask_user` and `finish` only
change task state, so the TaskActor handles them itself; `terminal` and `editor`
execute in a ToolActor. A turn the output-token limit cut off is no answer: its
whole tool calls run, a call cut mid-arguments gets `CUT_CALL_RESULT` instead of
running, and the next turn starts with `CONTINUE_MESSAGE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minidevin.runtime.instructions import Instructions
from minidevin.runtime.providers.base import CONTINUE_MESSAGE, ToolCall
from minidevin.runtime.tools import ToolResult

SYSTEM_PROMPT = """\
You are minidevin, an autonomous software engineer working in the repository at {cwd}.
Work step by step: first call `plan` with the steps you intend to take, keep the plan's
statuses up to date as you go, use `terminal` to run commands and `editor` to read and change
files (paths are relative to the working directory), check your work by running it, and call
`finish` with a short summary when you are done. Ask the user with `ask_user` only when you
cannot proceed without an answer."""


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
