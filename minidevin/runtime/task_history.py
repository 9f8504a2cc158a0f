"""A task rebuilt from its log: the model conversation and the task's state, by folding events.

The TaskActor keeps its conversation in a `TaskHistory` and changes it only by
applying the events it emits, so the conversation it sends the model is, at
every moment, what folding the committed log gives on any thread or machine:
resuming a task, rendering `trajectory.json` and a follow-up's context all read
the same fold. (Its `status` can lag: the session emits `queued`/`running`
itself; the task row, a projection of the whole log, is the status of record.)

The conversation is in the OpenAI Chat Completions format (see
`providers/base.py`). User messages wait in `pending` until the next
`turn_start`: an input that arrives while a turn streams belongs to the next one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from minidevin.runtime.events import FINAL_STATUSES, Event

INTERRUPTED_OUTPUT = (
    "Interrupted: the task ended before this call finished (it may not have run, or run "
    "only in part). Check the state of the workspace before repeating it."
)
UNANSWERED_OUTPUT = "Unanswered: the task ended before the user answered this question."


@dataclass
class TaskHistory:
    messages: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # user messages not yet sent
    instructions: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=lambda: {"steps": []})
    iterations: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    status: str = "queued"
    result: dict[str, Any] | None = None
    truncated: bool = False  # the latest model turn was cut off by its output limit
    started: bool = False  # it has a system prompt: the conversation began
    inherited: int = 0  # messages of the session's earlier tasks it began with
    # the latest model turn's tool calls that have no result yet, in order
    open_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)  # calls clients saw a `tool_call` of
    # calls that were put to a person: call id -> "approve", "reject" or None (undecided)
    approvals: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def rebuild(cls, events: Iterable[Event]) -> TaskHistory:
        history = cls()
        for event in events:
            history.apply(event)
        return history

    def apply(self, event: Event) -> None:
        data = event.data
        match event.type:
            case "system_prompt":
                self.messages.insert(0, {"role": "system", "content": data["content"]})
                self.instructions = list(data.get("instructions") or [])
                self.started = True
            case "session_context":
                self.messages.extend(data["messages"])
                self.inherited = len(data["messages"])
            case "user_message" if data.get("source") == "task":  # the description goes first
                self.pending.insert(0, {"role": "user", "content": data["content"]})
            case "user_message":
                self.pending.append({"role": "user", "content": data["content"]})
            case "resumed" if data.get("message"):
                self.pending.append({"role": "user", "content": data["message"]})
            case "turn_start":
                self.messages.extend(self.pending)
                self.pending.clear()
            case "model_turn":
                self._model_turn(data)
            case "tool_call" if data.get("call_id"):
                self.announced.add(data["call_id"])
            case "tool_result" if data.get("call_id"):  # (a log from before call ids has none)
                self.open_calls.pop(data["call_id"], None)
                self.messages.append(
                    {"role": "tool", "tool_call_id": data["call_id"], "content": data["output"]}
                )
            case "approval_request":
                self.approvals[data["call_id"]] = None  # (asked again: undecided again)
            case "approval_decision":
                self.approvals[data["call_id"]] = data["decision"]
            case "plan_update":
                self.plan = data["plan"]
            case "usage":
                self.usage = data["usage"]
                self.iterations = data["iteration"]
            case "status":
                self.status = data["status"]
                if self.status in FINAL_STATUSES:
                    self.result = data.get("result")

    def _model_turn(self, data: dict[str, Any]) -> None:
        calls = data.get("tool_calls") or []
        content = data.get("content") or (None if calls else "")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in calls
            ]
        self.messages.append(message)
        self.truncated = bool(data.get("truncated"))
        self.open_calls = {call["id"]: call for call in calls}
        self.announced.clear()

    def awaiting_approval(self) -> list[dict[str, Any]]:
        """For a resumed task: the open call that still waits for its decision and the
        calls of its turn after it (none of them ran), in order; empty if none waits."""
        calls = list(self.open_calls.values())
        for index, call in enumerate(calls):
            if call["id"] in self.approvals and self.approvals[call["id"]] is None:
                return calls[index:]
        return []

    @property
    def summary(self) -> str | None:
        """The final summary, for a task that ended with one."""
        return (self.result or {}).get("summary")

    def closed_messages(self) -> list[dict[str, Any]]:
        """The conversation without the system prompt and the earlier tasks it began with,
        every tool call answered: what a later task of the session is shown of this one."""
        messages = [m for m in self.messages if m.get("role") != "system"][self.inherited :]
        messages += [
            {"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_OUTPUT}
            for call_id in self.open_calls
        ]
        return messages
