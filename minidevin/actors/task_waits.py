"""A task waiting for a person: its questions (`ask_user`) and its approvals.

A question parks the task (its slot given back) until the user's input answers
it. A call that must wait (`runtime/approvals.py`) is put to a person the same
way, and the decision runs the call or answers it as rejected; the turn's later
calls follow in order.

Requests and decisions are events, so a pending approval is part of the log: a
resumed task puts the same call to the person again (`TaskHistory.awaiting_approval`).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from minidevin.actors.deps import Deps
from minidevin.actors.messages import InputsFull, TaskParked, TaskSpec, TaskWantsSlot
from minidevin.runtime import agent
from minidevin.runtime import event_types as ev
from minidevin.runtime.approvals import needs_approval
from minidevin.runtime.event_types import EventBody
from minidevin.runtime.providers.base import ToolCall
from minidevin.runtime.task_history import TaskHistory
from minidevin.runtime.tools import ToolContext, ToolError, ToolResult
from minidevin.runtime.tools.registry import ToolRegistry

REJECTED_OUTPUT = "Rejected by the user: the call did not run. Reason: {reason}"


class TaskWaits:
    """A mixin of `TaskActor`, whose state it uses."""

    spec: TaskSpec
    history: TaskHistory
    session: pykka.ActorRef
    ending: Any
    registry: ToolRegistry
    context: ToolContext | None
    deps: Deps
    pending_calls: deque[ToolCall]
    question_call: ToolCall | None
    approval_call: ToolCall | None = None  # the call that waits for a decision
    approved_call: str | None = None  # the id of the call approved and about to run
    answered: str | None  # the status message once the parked task goes on

    # the TaskActor's (declared, not defined: a definition here could shadow theirs)
    _emit: Callable[[EventBody], bool]
    _set_status: Callable[[str, str], None]
    _record_result: Callable[[ToolCall, ToolResult], bool]

    # -- questions ----------------------------------------------------------------------

    def _ask(self, call: ToolCall) -> bool:
        """Put the question to the user; False (with a failed result) if it is malformed."""
        try:
            question = self.registry.parse("ask_user", call.arguments).question
        except ToolError as exc:
            self._record_result(call, ToolResult(str(exc), False))
            return False
        self.question_call = call
        self._set_status("waiting_input", question)
        with contextlib.suppress(pykka.ActorDeadError):  # waiting for a person: no slot held
            self.session.tell(TaskParked(self.spec.task_id))
        return True

    def _on_input(self, content: str) -> bool:
        """Answer the question (then go on once a slot is ours again) or queue the input.

        `InputsFull` when `max_pending_inputs` inputs already wait to be read.
        """
        if self.ending is not None:
            return False
        if self.question_call is None:
            limit = self.deps.settings.max_pending_inputs
            if len(self.history.pending) >= limit:
                raise InputsFull(
                    f"the task already holds {limit} unread inputs "
                    "(MINIDEVIN_MAX_PENDING_INPUTS); send more once it has read them"
                )
            # sent with the next turn (not logged: the log closed itself, a store outage)
            return self._emit(ev.UserMessage(content=content, source="input"))
        call, self.question_call = self.question_call, None
        if not self._record_result(call, ToolResult(content, True)):
            return False
        self.answered = "Input received"
        with contextlib.suppress(pykka.ActorDeadError):
            self.session.tell(TaskWantsSlot(self.spec.task_id))
        return True

    # -- approvals ----------------------------------------------------------------------

    def _approval_reason(self, call: ToolCall) -> str | None:
        """Why `call` must wait for a person, or None to run it now (also for a call
        that will fail on its arguments anyway: it runs nothing)."""
        if call.id == self.approved_call:
            self.approved_call = None
            return None
        if self.spec.approval_policy == "never":
            return None
        try:
            self.registry.parse(call.name, call.arguments)
        except ToolError:
            return None
        env = self.context.env if self.context is not None else None
        return needs_approval(
            self.spec.approval_policy,
            call.name,
            call.arguments,
            path=(env or {}).get("PATH"),
            working_directory=self.spec.working_directory,
        )

    def _ask_approval(self, call: ToolCall, reason: str) -> None:
        """Put `call` to a person; the task waits, without its slot, for the decision."""
        self.approval_call = call
        shown = agent.input_of(call)
        self._emit(
            ev.ApprovalRequestEvent(call_id=call.id, tool=call.name, input=shown, reason=reason)
        )
        label = self.registry.label(call.name, shown)
        self._set_status("waiting_approval", f"Waiting for approval: {label}")
        with contextlib.suppress(pykka.ActorDeadError):
            self.session.tell(TaskParked(self.spec.task_id))

    def _decide(self, call_id: str, decision: str, reason: str | None) -> str:
        """Apply a person's decision; the reply of `DecideApproval`."""
        if self.ending is not None:
            return "ended"
        call = self.approval_call
        if call is None or call.id != call_id:
            if call_id not in self.history.approvals:
                return "unknown"
            return "ended" if self.history.approvals[call_id] is None else "decided"
        if not self._emit(
            ev.ApprovalDecisionEvent(call_id=call_id, decision=decision, reason=reason)  # type: ignore[arg-type]
        ):
            return "ended"  # (the log closed itself: a store outage)
        self.approval_call = None
        if decision == "approve":
            self.approved_call = call.id
            self.pending_calls.appendleft(call)  # runs first once the slot is back
            self.answered = "Call approved"
        else:
            output = REJECTED_OUTPUT.format(reason=reason or "none given")
            self._record_result(call, ToolResult(output, False))
            self.answered = "Call rejected"
        with contextlib.suppress(pykka.ActorDeadError):
            self.session.tell(TaskWantsSlot(self.spec.task_id))
        return decision
