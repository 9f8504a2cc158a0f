"""TaskActor: one task's state machine, conversation, plan and iteration count.

It never blocks: model turns go to a ModelActor, commands and file edits to a
ToolActor, and their answers come back as messages. So `StopTask` and
`UserInput` are handled within milliseconds at any moment. State leaves this
actor only as events (the task's log) and writes (the store).
"""

from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import Future
from typing import Any

import pykka
import structlog

from minidevin.actors.children import ModelActor, ToolActor, tool_context
from minidevin.actors.deps import Deps
from minidevin.actors.messages import (
    ChildCrashed,
    DecideApproval,
    DiffMade,
    InputsFull,
    McpFailed,
    McpStarted,
    ModelTurnDone,
    ModelTurnFailed,
    RunTool,
    SlotGranted,
    SnapshotTaken,
    StartMcp,
    StopTask,
    StoreLost,
    StreamTurn,
    TakeSnapshot,
    TaskSpec,
    ToolDone,
    UserInput,
)
from minidevin.actors.task_end import Ending, TaskEnding
from minidevin.actors.task_start import (
    interrupted_results,
    load_history,
    load_secrets,
    opening_events,
)
from minidevin.actors.task_tools import TaskTools
from minidevin.actors.task_waits import TaskWaits
from minidevin.runtime import agent, metrics, tracing
from minidevin.runtime import event_types as ev
from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.context import fit_messages, input_budget
from minidevin.runtime.event_types import EventBody
from minidevin.runtime.events import TaskEventLog
from minidevin.runtime.mcp.config import hidden_values
from minidevin.runtime.mcp.servers import McpTools
from minidevin.runtime.providers.base import CONTINUE_MESSAGE, ToolCall
from minidevin.runtime.redaction import Redactor
from minidevin.runtime.secrets_store import SecretUnreadable
from minidevin.runtime.snapshots import snapshots_for
from minidevin.runtime.storage import StoreError
from minidevin.runtime.task_history import TaskHistory
from minidevin.runtime.tools import ToolContext, ToolResult
from minidevin.runtime.tools.paths import WorkspaceChanged
from minidevin.runtime.tools.registry import TOOLS, default_registry
from minidevin.runtime.tools.sandbox import run_identity
from minidevin.runtime.usage import UsageMeter
from minidevin.runtime.workspace import verify_working_directory

log = structlog.get_logger(__name__)


class TaskActor(TaskTools, TaskWaits, TaskEnding, pykka.ThreadingActor):
    def __init__(
        self, spec: TaskSpec, events: TaskEventLog, deps: Deps, session: pykka.ActorRef
    ) -> None:
        super().__init__()
        self.spec = spec
        self.events = events
        self.deps = deps
        self.session = session
        self.cancel = CancelToken()
        # the conversation and the task's state: changed only by applying our own events
        self.history = TaskHistory()
        # the task's tools: the built-ins, and its session's MCP servers' once they started
        self.registry = default_registry() if spec.mcp_servers else TOOLS
        self.mcp_ready = not spec.mcp_servers
        self.tools = tuple(self.registry.schemas())
        self.context: ToolContext | None = None
        self.pending_calls: deque[ToolCall] = deque()
        self.running_call: ToolCall | None = None
        self.question_call: ToolCall | None = None
        self.approval_call: ToolCall | None = None
        self.approved_call: str | None = None
        # the person answered (a question, an approval): going on once the slot is back,
        # with this status message
        self.answered: str | None = None
        self.base_tree: str | None = None
        self.ending: Ending | None = None
        self.model: pykka.ActorRef | None = None
        self.tool_runner: pykka.ActorRef | None = None
        self.meter = UsageMeter(deps.providers.price(spec.model))
        self.context_budget = input_budget(deps.providers.resolve(spec.model).context_window)
        self.context_shrunk = False
        self.stop_replies: list[Future[str | None]] = []
        self.snapshot_failed = False  # no "before" tree: the diff cannot be made
        self.released = False
        events.on_store_lost = self._store_lost  # (called on whichever thread emitted)
        self.snapshots = snapshots_for(
            deps.settings.snapshots_dir,
            spec.working_directory,
            spec.workspace_identity,
            run_identity(spec.working_directory, deps.settings.sandbox_uid),
        )

    # -- lifecycle -------------------------------------------------------------------

    def on_start(self) -> None:
        tracing.start_task(self.spec.task_id, self.spec.model, self.spec.session_id)
        try:
            spec = self.spec
            self.history = load_history(spec, self.deps)  # a resumed task's, from its log
            self.meter.restore(self.history.usage)
            secrets = load_secrets(spec, self.deps)
            masked = {**secrets, **hidden_values(list(spec.mcp_servers))}
            if masked and self.events.redactor is None:  # masked in every event from now on
                self.events.redactor = Redactor(masked)
            try:  # the directory the session was opened on, still (not a link swapped in)
                verify_working_directory(spec.working_directory, spec.workspace_identity)
            except WorkspaceChanged as exc:
                self.ending = ("failed", None, ("WORKSPACE_CHANGED", str(exc)), "Task failed")
                self._finalize("")
                return
            context = self.context = tool_context(
                spec.working_directory,
                self.deps.settings,
                self.cancel,
                spec.run_mode,
                spec.task_id,
                workspace_identity=spec.workspace_identity,
                secrets=secrets,
                redactor=self.events.redactor,
            )
            # a resumed task's call that waited for approval waits again, and its turn's
            # later calls run after it; the other unanswered calls get their results
            waiting = self.history.awaiting_approval()
            self.pending_calls.extend(ToolCall(c["id"], c["name"], c["arguments"]) for c in waiting)
            opening = (  # a new task's first events, or a resumed one's unanswered calls
                interrupted_results(self.history, skip={c["id"] for c in waiting})
                if self.history.started
                else opening_events(spec, self.deps, context)
            )
            for body in opening:
                self._emit(body)
            mcp = (
                McpTools(
                    spec.mcp_servers,
                    context,
                    start_timeout=self.deps.settings.mcp_start_timeout,
                    allow_private=self.deps.settings.mcp_allow_private,
                )
                if spec.mcp_servers
                else None
            )
            self.tool_runner = ToolActor.start(
                self.actor_ref, context, self.snapshots, self.registry, mcp
            )
            self.tool_runner.tell(TakeSnapshot())
        except (StoreError, TimeoutError) as exc:  # (reads wait for held writes: a store outage)
            self.events.unblock()
            problem = f"the task could not start: {exc}"
            self.ending = ("failed", None, ("STORE_UNAVAILABLE", problem), "Task failed")
            self._finalize("")
        except SecretUnreadable as exc:  # (the secrets key was changed since they were stored)
            problem = f"the task could not start: {exc.detail}"
            self.ending = ("failed", None, (exc.code, problem), "Task failed")
            self._finalize("")
        except Exception:  # pykka would not call on_failure for this: fail the task here
            self.on_failure(*sys.exc_info())

    def on_stop(self) -> None:
        self.cancel.cancel()
        for child in (self.model, self.tool_runner):
            if child is not None:
                child.stop(block=False)
        status = self.ending[0] if self.ending is not None else None
        tracing.end_task(self.spec.task_id, status)
        for reply in self.stop_replies:  # nobody waits forever on a stopped actor
            if not reply.done():
                reply.set_result(status)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("task_actor_crashed", task_id=self.spec.task_id, error=repr(exception_value))
        self.cancel.cancel()
        if self.ending is None:
            self.ending = ("failed", None, ("INTERNAL_ERROR", "the task crashed"), "Task failed")
        try:  # (a diff was to be made once there was a "before": none now)
            self._finalize(None if self.base_tree is not None else "")
        finally:
            self.on_stop()

    # -- messages ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        try:
            self._handle(message)
        except Exception as exc:  # a bug here fails this task only, and still ends it fully
            log.error("task_actor_crashed", task_id=self.spec.task_id, error=repr(exc))
            if self.ending is None:  # (the diff is still made: the actor lives on for it)
                self._end(
                    "failed", error=("INTERNAL_ERROR", "the task crashed"), message="Task failed"
                )
            else:
                self._finalize(None)

    def _handle(self, message: Any) -> None:
        match message:
            case SnapshotTaken(tree=tree):
                self.base_tree, self.snapshot_failed = tree, tree is None
                if self.ending is not None:
                    pass
                elif not self.mcp_ready:  # the first turn needs the MCP servers' tools
                    assert self.tool_runner is not None
                    self.tool_runner.tell(StartMcp())
                else:
                    self._continue()  # (a resumed task's waiting calls first, if any)
            case McpStarted(problems=problems, seconds=seconds):
                self.mcp_ready = True
                self.tools = tuple(self.registry.schemas())
                log.info("mcp_servers_started", task_id=self.spec.task_id, seconds=seconds)
                self._mcp_failed(problems)
                if self.ending is None:
                    self._continue()
            case McpFailed(problems=problems):
                self._mcp_failed(problems)
            case ModelTurnDone(turn=turn):
                self._on_turn(turn)
            case ModelTurnFailed(code="CONTEXT_LENGTH_EXCEEDED") if self._shrink_context():
                self._request_turn()
            case ModelTurnFailed(code=code, message=text):
                if self.ending is None:
                    self._end("failed", error=(code, text), message=f"Model call failed: {text}")
            case ToolDone(call_id=call_id, result=result):
                if self.running_call is not None and call_id == self.running_call.id:
                    call, self.running_call = self.running_call, None
                    self._record_result(call, result)
                    self._continue()
            case StopTask(reason=reason, reply=reply):
                if reply is not None and self.events.closed and self.ending is not None:
                    reply.set_result(self.ending[0])  # already ended: its final status
                elif reply is not None:  # answered once the final status is written
                    self.stop_replies.append(reply)
                self._end("stopped", message=reason)
            case UserInput(content=content, reply=reply):
                try:
                    accepted = self._on_input(content)
                except InputsFull as exc:
                    if reply is not None and not reply.done():
                        reply.set_exception(exc)
                else:
                    if reply is not None and not reply.done():
                        reply.set_result(accepted)
            case SlotGranted() if self.answered:
                message, self.answered = self.answered, None
                if self.ending is None:
                    self._set_status("running", message)
                    self._continue()
            case DecideApproval(call_id=call_id, decision=decision, reason=reason, reply=reply):
                outcome = self._decide(call_id, decision, reason)
                if reply is not None and not reply.done():
                    reply.set_result(outcome)
            case DiffMade(patch=patch):
                self._finalize(patch)  # (None: the diff could not be made)
            case StoreLost(detail=detail):
                self._abandon(detail)
            case ChildCrashed(child=child, error=error):
                self._on_child_crash(child, error)

    # -- the loop: model turn -> tool calls -> next turn ----------------------------------

    def _next_turn(self) -> None:
        if self.history.iterations >= self.spec.max_iterations:
            self._end(
                "failed",
                error=("MAX_ITERATIONS_REACHED", "Maximum iterations reached"),
                message=f"Stopped after {self.history.iterations} iterations",
            )
            return
        if self.history.truncated:  # (each turn sets it anew)
            self._emit(ev.UserMessage(content=CONTINUE_MESSAGE, source="continue"))
        self._emit(ev.TurnStart(iteration=self.history.iterations + 1))  # sends what is pending
        self._request_turn()

    def _request_turn(self) -> None:
        if self.model is None:
            self.model = ModelActor.start(
                self.actor_ref,
                self.deps.providers,
                self.spec.model,
                self.events,
                self.cancel,
                self.deps.retry_policy,
            )
        fitted = fit_messages(self.history.messages, self.context_budget)
        self.model.tell(StreamTurn(tuple(fitted), self.tools))

    def _shrink_context(self) -> bool:
        """After the provider said the context is too long: try once with half the budget."""
        if self.ending is not None or self.context_shrunk or self.context_budget <= 512:
            return False
        self.context_shrunk = True
        self.context_budget //= 2
        return True

    def _on_turn(self, turn: Any) -> None:
        if self.ending is not None:
            return
        metrics.add_usage(self.meter, turn.usage, self.deps.providers, self.spec.model)
        self._emit(ev.ModelTurnEvent.of(turn))
        self._emit(
            ev.UsageUpdate(usage=self.meter.as_dict(), iteration=self.history.iterations + 1)
        )
        overspent = self.meter.over_budget(self.spec.max_cost_usd)
        if overspent is not None:
            self._end(
                "failed",
                error=("BUDGET_EXCEEDED", overspent),
                message="Stopped: the cost budget is spent",
            )
            return
        if turn.truncated:  # not an answer: its whole calls run, then it goes on
            self._set_status("running", agent.CUT_OFF_STATUS)
        elif not turn.tool_calls:
            summary = (
                agent.final_summary(self.history.messages) or "The agent ended without a summary."
            )
            self._end("completed", result={"success": True, "summary": summary})
            return
        self.pending_calls.extend(turn.tool_calls)
        self._continue()

    def _continue(self) -> None:
        """Run the turn's remaining tool calls; when none is left, start the next turn."""
        while self.pending_calls and self.ending is None:
            call = self.pending_calls.popleft()
            if call.id not in self.history.announced:  # (a call approved or asked again: once)
                self._emit(
                    ev.ToolCallEvent(call_id=call.id, tool=call.name, input=agent.input_of(call))
                )
            if self.history.truncated and agent.is_cut_call(call):
                self._record_result(call, agent.CUT_CALL_RESULT)
                continue
            if (reason := self._approval_reason(call)) is not None:
                self._ask_approval(call, reason)
                return
            if self.registry.runs_in(call.name) == "tools":
                self.running_call = call
                assert self.tool_runner is not None
                self.tool_runner.tell(RunTool(call.id, call.name, call.arguments))
                return
            if call.name == "ask_user":
                if self._ask(call):
                    return
                continue
            self._record_result(call, self._control_tool(call))
        waits = self.running_call or self.question_call or self.approval_call
        if self.ending is None and waits is None:
            self._next_turn()

    def _record_result(self, call: ToolCall, result: ToolResult) -> bool:
        return self._emit(
            ev.ToolResultEvent(
                call_id=call.id, tool=call.name, output=result.output, success=result.success
            )
        )

    def _on_child_crash(self, child: str, error: str) -> None:
        log.error("child_crashed", task_id=self.spec.task_id, child=child, error=error)
        if child == "tools":
            self.tool_runner = None
            if self.ending is not None:
                self._finalize(None)  # (it crashed making the diff)
                return
        else:
            self.model = None
        self._end(
            "failed", error=("INTERNAL_ERROR", f"the {child} actor crashed"), message="Task failed"
        )

    # -- helpers --------------------------------------------------------------------------

    def _set_status(self, status: str, message: str) -> None:
        self._emit(ev.Status(status=status, message=message))  # type: ignore[arg-type]

    def _emit(self, body: EventBody) -> bool:
        """Append an event to the log and apply it to the task's own history; False if
        the log is closed (the task ended, or its log closed itself for the store)."""
        event = self.events.emit(body)
        if event is not None:
            self.history.apply(event)
        return event is not None
