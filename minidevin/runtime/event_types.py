"""One pydantic model per task event type: what a task's log may hold.

The API document's six (`token`, `tool_call`, `tool_result`, `plan_update`,
`status`, `error`) and ours. Every fact the model conversation needs is one of
them (`system_prompt`, `session_context`, `user_message`, `turn_start`,
`model_turn`, `tool_result`), so a task can be rebuilt from its log alone
(`runtime/task_history.py`). The WebSocket message of an event is its fields
plus `type`, `timestamp`, `seq` and `task_id`; the OpenAPI document lists each
model under `components`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from minidevin.runtime.providers.base import ModelTurn
from minidevin.runtime.schemas import Plan, TaskResult, TaskStatus, Usage


class EventBody(BaseModel):
    """The fields of one event (without `type`, `seq`, `timestamp`, `task_id`)."""

    model_config = ConfigDict(extra="forbid")
    type: ClassVar[str]
    summary: ClassVar[str]


class Token(EventBody):
    type = "token"
    summary = "A piece of the model's text as it streams."
    content: str


class TurnRestart(EventBody):
    type = "turn_restart"
    summary = "The model turn failed and restarts: text streamed since the last turn is void."
    attempt: int
    max_attempts: int
    delay: float
    code: str
    reason: str


class ToolCallEvent(EventBody):
    type = "tool_call"
    summary = "A tool call about to run; `call_id` pairs it with its `tool_result`."
    call_id: str
    tool: str
    input: Any


class ToolResultEvent(EventBody):
    type = "tool_result"
    summary = "A tool call's result, exactly as the model is sent it."
    call_id: str
    tool: str
    output: str
    success: bool


class PlanUpdate(EventBody):
    type = "plan_update"
    summary = "The whole plan, after the agent changed it."
    plan: Plan


class Status(EventBody):
    type = "status"
    summary = "The task's status changed. A final one (`completed`, `failed`, `stopped`) "
    "carries the task's `result` when it has one, and ends the stream unless the task is "
    "resumed (its log then goes on after it)."
    status: TaskStatus
    message: str
    result: TaskResult | None = None


class Error(EventBody):
    type = "error"
    summary = "Why the task failed (before its final `status`), or a problem it goes on "
    "after (`MCP_SERVER_FAILED`: an MCP server that did not start or died; its tools are gone)."
    error: str
    code: str


class UsageUpdate(EventBody):
    type = "usage"
    summary = "Tokens and cost so far, after model turn `iteration`."
    usage: Usage
    iteration: int


class SystemPrompt(EventBody):
    type = "system_prompt"
    summary = "The system prompt, with the repository instructions (AGENTS.md) it holds."
    content: str
    instructions: list[dict[str, Any]] = []


class SessionContext(EventBody):
    type = "session_context"
    summary = "The earlier tasks of the session, condensed, as the conversation starts with them."
    tasks: list[str]
    messages: list[dict[str, Any]]


class UserMessage(EventBody):
    type = "user_message"
    summary = "A user message for the model: the task, an input, a resume message, or the "
    "request to continue a cut-off reply. It is sent with the next model turn."
    content: str
    source: Literal["task", "input", "resume", "continue"]


class TurnStart(EventBody):
    type = "turn_start"
    summary = "A model turn is requested; the user messages received so far go with it."
    iteration: int


class ModelToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    arguments: str


class ModelTurnEvent(EventBody):
    type = "model_turn"
    summary = "A model turn as the conversation keeps it: its text and its tool calls."
    content: str
    tool_calls: list[ModelToolCall] = []
    finish_reason: str | None = None
    truncated: bool = False

    @classmethod
    def of(cls, turn: ModelTurn) -> ModelTurnEvent:
        calls = [
            ModelToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in turn.tool_calls
        ]
        return cls(
            content=turn.text,
            tool_calls=calls,
            finish_reason=turn.finish_reason,
            truncated=turn.truncated,
        )


class ApprovalRequestEvent(EventBody):
    type = "approval_request"
    summary = "A tool call waits for a person's approval (`approval_policy`); it runs only "
    "once approved. The task's status is `waiting_approval` until the decision."
    call_id: str
    tool: str
    input: Any
    reason: str


class ApprovalDecisionEvent(EventBody):
    type = "approval_decision"
    summary = "The decision on an `approval_request`: a rejected call does not run (its "
    "`tool_result` says so, with the reason)."
    call_id: str
    decision: Literal["approve", "reject"]
    reason: str | None = None


class Resumed(EventBody):
    type = "resumed"
    summary = "The task goes on (`POST /api/tasks/{id}/resume`) with these limits in all; "
    "`message`, if any, is sent with the next model turn."
    message: str | None = None
    max_iterations: int
    max_cost_usd: float | None = None


EVENT_TYPES: tuple[type[EventBody], ...] = (
    Token,
    ToolCallEvent,
    ToolResultEvent,
    PlanUpdate,
    Status,
    Error,
    UsageUpdate,
    TurnRestart,
    SystemPrompt,
    SessionContext,
    UserMessage,
    TurnStart,
    ModelTurnEvent,
    Resumed,
    ApprovalRequestEvent,
    ApprovalDecisionEvent,
)
BY_TYPE: dict[str, type[EventBody]] = {model.type: model for model in EVENT_TYPES}


def event_data(body: EventBody) -> dict[str, Any]:
    """The event's stored fields (JSON-ready; `result` only on a status that has one)."""
    data = body.model_dump(mode="json")
    if isinstance(body, Status) and body.result is None:
        del data["result"]
    return data


def parse_event(type_: str, data: dict[str, Any]) -> EventBody:
    """The typed event of a stored one (`KeyError` for a type this version does not know)."""
    return BY_TYPE[type_].model_validate(data)
