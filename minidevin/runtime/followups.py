"""What a follow-up task is told of the session's earlier tasks (task field `context`).

With `context: "session"` (the default) a task starts with the conversations of
the session's earlier tasks, oldest first, each rebuilt from its log, after the
system prompt and before its own description. They are condensed to fit half
the model's input budget: first old tool outputs are shortened (oldest first),
then dropped, then the oldest tasks are reduced to their description and final
summary, and as a last resort left out. The result is recorded in the task's
log (`session_context`), so its own conversation still rebuilds exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from minidevin.runtime.context import DROPPED, estimate_tokens, shorten_head
from minidevin.runtime.task_history import TaskHistory

EARLIER_TASK = "[An earlier task of this session]\n"


@dataclass
class EarlierTask:
    task_id: str
    description: str
    status: str
    history: TaskHistory

    def full(self) -> list[dict[str, Any]]:
        """Its whole conversation (without system prompt), marked as an earlier task."""
        messages = self.history.closed_messages()
        for index, message in enumerate(messages):
            if message.get("role") == "user":  # its description: the first user message
                messages[index] = {**message, "content": EARLIER_TASK + str(message["content"])}
                break
        return messages

    def reduced(self) -> list[dict[str, Any]]:
        """Its description and how it ended: two messages."""
        summary = self.history.summary or f"(The task ended {self.status} without a summary.)"
        return [
            {"role": "user", "content": EARLIER_TASK + self.description},
            {"role": "assistant", "content": summary},
        ]


def session_context(earlier: Sequence[EarlierTask], budget: int) -> list[dict[str, Any]]:
    """The earlier tasks' messages, oldest first, condensed to about `budget` tokens."""
    parts = [task.full() for task in earlier if task.history.started]
    tasks = [task for task in earlier if task.history.started]
    total = sum(estimate_tokens(part) for part in parts)
    for shorten in (shorten_head, lambda text: DROPPED):  # tool outputs, oldest first
        for part in parts:
            for index, message in enumerate(part):
                if total <= budget:
                    return _joined(parts)
                if message.get("role") != "tool":
                    continue
                before = estimate_tokens([message])
                part[index] = {**message, "content": shorten(str(message["content"]))}
                total += estimate_tokens([part[index]]) - before
    for number, task in enumerate(tasks):  # then the oldest tasks, to what they did
        if total <= budget:
            return _joined(parts)
        reduced = task.reduced()
        total += estimate_tokens(reduced) - estimate_tokens(parts[number])
        parts[number] = reduced
    while parts and total > budget:  # and last, left out, oldest first
        total -= estimate_tokens(parts.pop(0))
    return _joined(parts)


def _joined(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [message for part in parts for message in part]
