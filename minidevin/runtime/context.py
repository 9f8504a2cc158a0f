"""Keeping a long conversation inside the model's context window.

Before each turn the conversation is measured (about four characters a token);
when it would not fit, older tool outputs are shortened, oldest first, to a
head and a marker, then dropped to a one-line note. The system prompt, the
task and every assistant message (so the plan and the tool calls) stay intact,
and the most recent turns as long as they fit. Only the copy sent to the model is shortened: the
task keeps the full record, and so does its trajectory artifact.
"""

from __future__ import annotations

import json
from typing import Any

CHARS_PER_TOKEN = 4
SHORT_HEAD = 400
DROPPED = "[output omitted to fit the context window]"


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False)) // CHARS_PER_TOKEN + 4 for m in messages)


def input_budget(context_window: int) -> int:
    """Tokens the conversation may use, leaving room for the model's answer."""
    return max(256, context_window - min(8192, context_window // 4))


def fit_messages(messages: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """`messages`, or a copy with older tool outputs shortened until it fits `budget`.

    Oldest outputs go first, so the recent turns stay intact as long as they can;
    the newest output is only shortened (never dropped) as the last resort.
    """
    total = estimate_tokens(messages)
    if total <= budget:
        return messages
    fitted = list(messages)
    tools = [i for i, message in enumerate(fitted) if message.get("role") == "tool" and i > 1]
    older, newest = tools[:-1], tools[-1:]
    for shorten, indexes in ((shorten_head, older), (_drop, older), (shorten_head, newest)):
        for index in indexes:
            if total <= budget:
                return fitted
            before = estimate_tokens([fitted[index]])
            fitted[index] = {**fitted[index], "content": shorten(str(fitted[index]["content"]))}
            total += estimate_tokens([fitted[index]]) - before
    return fitted


def shorten_head(content: str) -> str:
    if len(content) <= SHORT_HEAD + len(DROPPED):
        return content
    omitted = len(content) - SHORT_HEAD
    return f"{content[:SHORT_HEAD]}\n[... {omitted} characters omitted to fit the context window]"


def _drop(content: str) -> str:
    return DROPPED
