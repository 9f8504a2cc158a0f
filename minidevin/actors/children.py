"""The TaskActor's children: one streams model turns, one executes tools.

Both block on their own thread (a model stream, a subprocess) so the TaskActor
never does. Cancellation reaches them through the task's `CancelToken`, which
closes the stream or kills the process group at once. Their replies are tells
to the parent; a child never asks its parent.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pykka
import structlog

from minidevin.actors.messages import (
    ChildCrashed,
    DiffMade,
    MakeDiff,
    McpFailed,
    McpStarted,
    ModelTurnDone,
    ModelTurnFailed,
    RunTool,
    SnapshotTaken,
    StartMcp,
    StreamTurn,
    TakeSnapshot,
    ToolDone,
)
from minidevin.runtime import metrics, tracing
from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.diffs import write_diff
from minidevin.runtime.event_types import Token, TurnRestart
from minidevin.runtime.events import TaskEventLog
from minidevin.runtime.mcp.servers import McpTools
from minidevin.runtime.providers.base import Model, ProviderError
from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.providers.retry import RetryPolicy, stream_with_retries
from minidevin.runtime.snapshots import Snapshots
from minidevin.runtime.token_coalescer import TokenCoalescer
from minidevin.runtime.tools import TOOLS, ToolContext, ToolRegistry, ToolResult
from minidevin.runtime.tools.environment import command_environment, user_variables
from minidevin.runtime.tools.paths import WorkspaceChanged
from minidevin.runtime.tools.sandbox import run_identity, sandbox_status
from minidevin.runtime.workspace import verify_working_directory

log = structlog.get_logger(__name__)


def tell_parent(parent: pykka.ActorRef, message: Any) -> None:
    """Tell the TaskActor; if it has ended meanwhile (a stop), the answer has no one to
    go to and is dropped."""
    with contextlib.suppress(pykka.ActorDeadError):
        parent.tell(message)


class ModelActor(pykka.ThreadingActor):
    """Streams one model turn at a time; publishes its text as `token` events (of at
    most 256 KiB of text each: `streaming.split_delta`), consecutive deltas joined
    within the policy's `token_coalesce_ms` (`runtime/token_coalescer.py`). Buffered
    text is flushed before any other event of the turn, at its end, and on a stop."""

    def __init__(
        self,
        parent: pykka.ActorRef,
        providers: ProviderRegistry,
        model_id: str,
        events: TaskEventLog,
        cancel: CancelToken,
        policy: RetryPolicy,
    ) -> None:
        super().__init__()
        self.parent = parent
        self.providers = providers
        self.model_id = model_id
        self.events = events
        self.cancel = cancel
        self.policy = policy
        self.model: Model | None = None
        self.provider = metrics.provider_of(providers, model_id)
        self.timer = metrics.TurnTimer(self.provider)  # a turn's duration and first text
        self.tokens = TokenCoalescer(self._emit_token, policy.token_coalesce_ms / 1000)
        self._unregister_flush = cancel.on_cancel(self.tokens.flush)  # before the stop's events

    def on_receive(self, message: Any) -> None:
        match message:
            case StreamTurn(messages=messages, tools=tools):
                tell_parent(self.parent, self._stream(list(messages), list(tools)))

    def _stream(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        self.timer = metrics.TurnTimer(self.provider)
        model = {"gen_ai.request.model": self.model_id, "gen_ai.provider.name": self.provider}
        with tracing.child_span(self.events.task_id, "model_turn", **model) as span:
            try:
                outcome = self._turn(messages, tools)
            finally:
                self.tokens.flush()  # the turn's text before its outcome (told by the caller)
            self.timer.done(outcome)
            tracing.record_turn(span, outcome)
        return outcome

    def _turn(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        try:
            if self.model is None:
                self.model = self.providers.create(self.model_id)
            turn = stream_with_retries(
                self.model,
                messages,
                tools,
                on_token=self._publish,
                cancel=self.cancel,
                policy=self.policy,
                on_retry=self._announce_retry,
            )
            return ModelTurnDone(turn)
        except Cancelled:
            return ModelTurnFailed("CANCELLED", "the model turn was cancelled")
        except ProviderError as exc:
            return ModelTurnFailed(exc.code, exc.message)
        except Exception as exc:  # a crash here fails the task, not the session
            log.exception("model_actor_crashed", model=self.model_id)
            return ModelTurnFailed("PROVIDER_ERROR", f"model call crashed: {type(exc).__name__}")

    def _publish(self, text: str) -> None:
        """A text delta: joined with its neighbours, cut in pieces a WebSocket message carries."""
        self.timer.first_text()
        self.tokens.add(text)

    def _emit_token(self, piece: str) -> None:
        self.events.emit(Token(content=piece))

    def on_stop(self) -> None:
        """Release the model's HTTP connections with the actor, not at garbage collection."""
        self._unregister_flush()
        self.tokens.flush()
        close = getattr(self.model, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:
                log.warning("model_close_failed", error=str(exc))

    def _announce_retry(self, attempt: int, delay: float, error: ProviderError) -> None:
        """Tell clients the turn restarts: tokens streamed since the last turn are void."""
        self.tokens.flush()
        self.events.emit(
            TurnRestart(
                attempt=attempt,
                max_attempts=self.policy.max_attempts,
                delay=round(delay, 3),
                code=error.code,
                reason=error.message,
            )
        )

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        tell_parent(self.parent, ChildCrashed("model", repr(exception_value)))


class ToolActor(pykka.ThreadingActor):
    """Executes the registry's `"tools"` calls (`terminal`, `editor`, external tools), one
    at a time, and workspace snapshots. Its executors are its own (the editor's undo
    history is per task)."""

    def __init__(
        self,
        parent: pykka.ActorRef,
        context: ToolContext,
        snapshots: Snapshots,
        registry: ToolRegistry | None = None,
        mcp: McpTools | None = None,
    ) -> None:
        super().__init__()
        self.parent = parent
        self.context = context
        self.snapshots = snapshots
        self.registry = registry if registry is not None else TOOLS
        self.tools = self.registry.executors()
        self.mcp = mcp  # the session's MCP servers: started on `StartMcp`, stopped with us

    def on_receive(self, message: Any) -> None:
        match message:
            case RunTool(call_id=call_id, name=name, arguments=arguments):
                result = self._run(name, arguments)
                if self.mcp is not None and (problems := self.mcp.take_problems()):
                    failed = tuple((p.server, p.message) for p in problems)
                    tell_parent(self.parent, McpFailed(failed))
                tell_parent(self.parent, ToolDone(call_id, result))
            case StartMcp():
                tell_parent(self.parent, self._start_mcp())
            case TakeSnapshot():
                tell_parent(self.parent, SnapshotTaken(self._snapshot()))
            case MakeDiff() as request:
                self._close_mcp()  # the task ended: no more calls
                tell_parent(self.parent, DiffMade(self._diff(request)))

    def _start_mcp(self) -> McpStarted:
        """Start the servers (all at once, within `mcp_start_timeout`); their tools join the
        registry the TaskActor shares with us."""
        if self.mcp is None:
            return McpStarted(())
        try:
            problems = self.mcp.start()
        except Cancelled:
            return McpStarted(())
        self.mcp.register(self.registry)
        problems += self.mcp.take_problems()
        self.tools = self.registry.executors()
        return McpStarted(tuple((p.server, p.message) for p in problems), self.mcp.start_seconds)

    def _close_mcp(self) -> None:
        if self.mcp is not None:
            try:
                self.mcp.close()
            except Exception as exc:  # stopping never fails the task's ending
                log.warning("mcp_close_failed", error=repr(exc))

    def on_stop(self) -> None:
        self._close_mcp()

    def _run(self, name: str, arguments: str) -> ToolResult:
        """Execute a call, timed (`minidevin_tool_call_seconds`) and traced."""
        started = time.monotonic()
        with tracing.child_span(
            self.context.task_id, "tool_call", **{"gen_ai.tool.name": name}
        ) as span:
            result = self._execute(name, arguments)
            tracing.record_tool(span, name, result)
        metrics.observe_tool_call(name, result.success, time.monotonic() - started)
        return result

    def _execute(self, name: str, arguments: str) -> ToolResult:
        context = self.context
        try:  # still the session's directory (the editor checks again on its descriptor)
            verify_working_directory(context.working_directory, context.workspace_identity)
            return self.registry.execute(name, arguments, context, self.tools)
        except WorkspaceChanged as exc:
            return ToolResult(str(exc), success=False)
        except Cancelled:
            return ToolResult("cancelled: the task was stopped", success=False)

    def _snapshot(self) -> str | None:
        try:
            return self.snapshots.take()
        except Exception as exc:
            log.warning("snapshot_failed", error=str(exc))
            return None

    def _diff(self, request: MakeDiff) -> Path | str | None:
        """The patch file (capped at `request.max_bytes`, never held in memory), or None."""
        git_dir = self.snapshots.git_dir
        out = request.path or git_dir.with_name(git_dir.name + ".patch")
        try:
            after = self.snapshots.take()
            if after == request.before:
                return ""  # (the same tree: an empty diff, without running git)
            before, unreadable = self.snapshots.complete(request.before, after)
            result = write_diff(git_dir, before, after, out, request.max_bytes, unreadable)
            if result.left_out:
                log.info("diff_capped", size=result.size, files_left_out=len(result.left_out))
            return result.path
        except Exception as exc:
            log.warning("diff_failed", error=str(exc))
            with contextlib.suppress(OSError):  # (its directory may be what failed)
                out.unlink(missing_ok=True)
            return None
        finally:
            self.snapshots.discard()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._close_mcp()
        tell_parent(self.parent, ChildCrashed("tools", repr(exception_value)))


def tool_context(
    working_directory: Path,
    settings: Any,
    cancel: CancelToken,
    run_mode: str = "offline",
    task_id: str = "",
    workspace_identity: tuple[int, int] | None = None,
    secrets: dict[str, str] | None = None,
    redactor: Any = None,
) -> ToolContext:
    """The tools' context for a task: sandboxed when the setting allows and bwrap works.

    Commands run as the working directory's owner, or `sandbox_uid` when root owns it
    (never as root), with the task's limits, an allowlisted environment, and the
    network only for an `online` task; the server's data directory is hidden. `secrets`
    (the session's) are added to the environment by name.
    """
    uid, gid = run_identity(working_directory, settings.sandbox_uid)
    return ToolContext(
        working_directory=working_directory,
        cancel=cancel,
        default_timeout=settings.command_timeout,
        max_timeout=settings.max_command_timeout,
        output_limit=settings.tool_output_limit,
        sandbox=settings.sandbox != "off" and sandbox_status().works,
        network=run_mode == "online",
        hidden_paths=(settings.data_dir, *settings.workspace_roots),  # other workspaces too
        env={**command_environment(task_id, uid), **user_variables(secrets or {})},
        redactor=redactor,
        workspace_identity=workspace_identity,
        uid=uid,
        gid=gid,
        task_id=task_id,
        memory_mb=settings.sandbox_memory_mb,
        pids=settings.sandbox_pids,
        cpus=settings.sandbox_cpus,
        tmp_mb=settings.sandbox_tmp_mb,
        read_paths=tuple(settings.sandbox_read_paths),
        data_dir=settings.data_dir,
    )
