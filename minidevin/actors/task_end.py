"""The last things a task leaves: its artifact files and its final events."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka
import structlog

from minidevin.actors.deps import Deps
from minidevin.actors.messages import MakeDiff, StoreLost, TaskEnded, TaskSpec
from minidevin.runtime.artifacts import write_task_artifacts
from minidevin.runtime.cancel import CancelToken
from minidevin.runtime.event_types import Error, Status
from minidevin.runtime.events import TaskEventLog
from minidevin.runtime.snapshots import Snapshots
from minidevin.runtime.task_history import TaskHistory

log = structlog.get_logger(__name__)

# (status, result, (error code, error text), status message)
Ending = tuple[str, dict[str, Any] | None, tuple[str, str] | None, str]


def task_ending(
    status: str,
    result: dict[str, Any] | None,
    error: tuple[str, str] | None,
    message: str | None,
) -> Ending:
    """The task's `Ending`; without `message`, the status message its outcome calls for."""
    if message is None:
        message = "Task completed successfully" if status == "completed" else f"Task {status}"
        if result is not None and not result["success"]:
            message = "Task finished without success"
    return (status, result, error, message)


def record_task_end(
    deps: Deps,
    spec: TaskSpec,
    events: TaskEventLog,
    ending: Ending,
    patch: str | Path | None,
    history: TaskHistory,
) -> None:
    """Write the task's artifacts, emit its error and final status, close its log.

    `patch`: the diff (text or file), or None when it could not be made. The
    final `status` event carries the result; the task row follows from it
    (`runtime/projection.py`). `trajectory.json` is rendered from the task's
    history, the fold of its log. An artifact that cannot be written is named
    in an `error` `ARTIFACTS_FAILED`, and a task that would have completed
    fails instead: it never ends `completed` without what it promised. None of
    these events waits for the store (a task can always end).
    """
    status, result, error, message = ending
    trajectory = {
        "task_id": spec.task_id,
        "description": events.redactor.text(spec.description)
        if events.redactor is not None
        else spec.description,
        "model": spec.model,
        "usage": history.usage,
        "instructions": history.instructions,  # the AGENTS.md files the system prompt holds
        "messages": history.messages + history.pending,
    }
    if events.redactor is not None and patch:  # the session's secrets masked in the diff too
        try:
            if isinstance(patch, Path):
                events.redactor.mask_file(patch)
            else:
                patch = events.redactor.text(patch)
        except OSError:
            patch = None  # (named as a failed artifact below)
    rows, failures = write_task_artifacts(
        deps.settings.artifacts_dir,
        spec.task_id,
        history.plan,
        patch,
        trajectory,
        sync=deps.settings.sync == "full",
    )
    deps.store.add_artifacts(rows)
    if failures:  # (before the task's own error: the one right before the status is the cause)
        log.error("artifacts_failed", task_id=spec.task_id, failures=failures)
        detail = "could not write the task's artifacts: " + "; ".join(failures)
        events.emit(Error(error=detail, code="ARTIFACTS_FAILED"), wait=False)
        if status == "completed":
            status, message = "failed", "Task failed: its artifacts could not be written"
    if error is not None:
        events.emit(Error(error=error[1], code=error[0]), wait=False)
    final = Status.model_validate({"status": status, "message": message, "result": result})
    events.emit(final, close=True)


class TaskEnding:
    """The TaskActor's ending: cancel the children's work, make the diff, write the
    artifacts and final events, then let the session's slot go (a mixin of
    `TaskActor`, whose state it uses)."""

    spec: TaskSpec
    deps: Deps
    events: TaskEventLog
    history: TaskHistory
    cancel: CancelToken
    snapshots: Snapshots
    session: pykka.ActorRef
    actor_ref: pykka.ActorRef
    tool_runner: pykka.ActorRef | None
    base_tree: str | None
    ending: Ending | None
    snapshot_failed: bool
    released: bool
    stop_replies: list[Future[str | None]]

    def _end(
        self,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
        message: str | None = None,
    ) -> None:
        """Begin the end: cancel the children's work, then compute the diff and finalize."""
        if self.ending is not None:
            return
        self.ending = task_ending(status, result, error, message)
        self.events.unblock()  # (its last events never wait for the store)
        self.cancel.cancel()
        if self.base_tree is not None and self.tool_runner is not None:
            artifacts = self.deps.settings.artifacts_dir
            self.tool_runner.tell(
                MakeDiff(
                    self.base_tree,
                    artifacts / f"{self.spec.task_id}.patch.tmp",
                    self.deps.settings.max_diff_mb << 20,
                )
            )
        else:
            self._finalize(None if self.snapshot_failed else "")

    def _finalize(self, patch: str | Path | None) -> None:
        """Write the artifacts and the final events (`patch` None: the diff failed)."""
        if self.ending is None or self.events.closed:
            if isinstance(patch, Path):
                patch.unlink(missing_ok=True)  # (the log ended it already: no artifacts)
            return
        if not patch:
            self.snapshots.discard()  # (a diff, when made, discarded it already)
        record_task_end(self.deps, self.spec, self.events, self.ending, patch, self.history)
        self._release()

    def _store_lost(self, detail: str) -> None:
        """Any thread: the log closed itself, the store down past its retry window.

        Only a message: the emitting thread may hold a lock the cancel needs (the
        token coalescer's), so the cancel runs on the actor's own thread.
        """
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(StoreLost(detail))

    def _abandon(self, detail: str) -> None:
        """The log ended the task (STORE_UNAVAILABLE, held until the store commits)."""
        self.ending = ("failed", None, ("STORE_UNAVAILABLE", detail), "Task failed")
        self.cancel.cancel()  # the model stream and the command stop now
        self.snapshots.discard()
        self._release()

    def _release(self) -> None:
        """The log is closed: answer whoever waits, free the session's slot, stop."""
        if self.released or self.ending is None:
            return
        self.released = True
        status = "failed" if self.events.lost is not None else self.ending[0]
        for reply in self.stop_replies:
            if not reply.done():
                reply.set_result(status)
        with contextlib.suppress(pykka.ActorDeadError):  # a closing session no longer waits
            self.session.tell(TaskEnded(self.spec.task_id, status))
        if self.actor_ref.is_alive():
            self.actor_ref.stop(block=False)
