"""SessionActor: one live session, its FIFO of waiting tasks and its running task.

Tasks of a session share a working directory, so one runs at a time; the rest
wait in arrival order (status `queued`). A task also needs one of the task
slots (`MINIDEVIN_MAX_CONCURRENT_TASKS` in all, `MINIDEVIN_MAX_TASKS_PER_USER`
per user), so sessions run in parallel up to those caps. A task waiting for a
person (`waiting_input`) gives its slot back; once answered it asks for one
again, and shows `queued` if it has to wait for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from minidevin.actors.deps import Deps
from minidevin.actors.messages import (
    Closing,
    DecideApproval,
    RetryStart,
    SlotGranted,
    StopAll,
    StopTask,
    SubmitTask,
    TaskEnded,
    TaskParked,
    TaskSpec,
    TaskWantsSlot,
    UserInput,
)
from minidevin.actors.task import TaskActor
from minidevin.actors.task_start import load_secrets
from minidevin.runtime.event_types import Resumed, Status
from minidevin.runtime.events import TaskEventLog
from minidevin.runtime.redaction import Redactor
from minidevin.runtime.storage import StoreError

log = structlog.get_logger(__name__)


@dataclass
class _Entry:
    spec: TaskSpec
    events: TaskEventLog


class SessionActor(pykka.ThreadingActor):
    def __init__(self, session_id: str, deps: Deps) -> None:
        super().__init__()
        self.session_id = session_id
        self.deps = deps
        self.waiting: deque[_Entry] = deque()
        self.running: tuple[_Entry, pykka.ActorRef] | None = None
        self.user = ""  # the owner of the session's tasks (one user per session)
        self.has_slot = False
        self.in_line = False  # asked for a slot and not yet granted
        self.parked = False  # the running task waits for a person, without a slot
        self.answered_waits = False  # the running task got its answer and waits for a slot
        self.stop_all_replies: list[Future[None]] = []
        self.submitted = 0
        self.idle = False  # so the first idle moment is reported
        self.close_reason = "Session closed"  # the running task's, when this actor stops
        self.closing = False  # told it is closing: start nothing more
        self.retry: threading.Timer | None = None  # the next try of a start the store refused

    def on_receive(self, message: Any) -> None:
        match message:
            case SubmitTask(spec=spec, reply=reply):
                self.submitted += 1
                self.user = spec.user_id
                if self._holds(spec.task_id):  # (a resume of a task already live again)
                    reply.set_result("conflict")
                    return
                last_seq = spec.resume["last_seq"] if spec.resume is not None else 0
                events = TaskEventLog(
                    spec.task_id, self.deps.store.append, last_seq, self.deps.store.wait_for_room
                )
                entry = _Entry(spec, events)
                if spec.resume is not None and not spec.requeued:
                    if spec.resume.get("message") and (secrets := load_secrets(spec, self.deps)):
                        events.redactor = Redactor(secrets)  # (the message may hold a value)
                    entry.events.emit(
                        Resumed(
                            message=spec.resume.get("message"),
                            max_iterations=spec.max_iterations,
                            max_cost_usd=spec.max_cost_usd,
                        ),
                        wait=False,
                    )
                queued = (
                    "Task queued again after a server restart"
                    if spec.requeued
                    else "Task resumed"
                    if spec.resume is not None
                    else "Task queued"
                )
                entry.events.emit(Status(status="queued", message=queued), wait=False)
                self.waiting.append(entry)
                self._start_next()
                running = self.running is not None and self.running[0] is entry
                reply.set_result("running" if running else "queued")
            case RetryStart():
                self.retry = None
                if not self.closing:
                    self._start_next()
            case SlotGranted():
                self.in_line = False
                self.has_slot = True
                if self.running is None:
                    self._start_next()
                elif self.answered_waits:
                    self._unpark()
                else:  # the running task is parked: it does not need it now
                    self._release_slot()
            case TaskParked(task_id=task_id) if self._is_running(task_id):
                self.parked, self.answered_waits = True, False
                self._release_slot()
            case TaskWantsSlot(task_id=task_id) if self._is_running(task_id) and self.parked:
                self.parked, self.answered_waits = False, True
                if self._want_slot():
                    self._unpark()
                else:
                    self._show_queued(self.running[0])  # type: ignore[index]
            case TaskEnded(task_id=task_id):
                if self._is_running(task_id):
                    self.running = None
                    self.parked = self.answered_waits = False
                self._start_next()
            case StopTask(task_id=task_id, reason=reason, reply=reply):
                self._stop_task(task_id, reason, reply)
            case UserInput(task_id=task_id, reply=reply):
                if self.running is not None and self.running[0].spec.task_id == task_id:
                    self._tell_running(message)
                elif reply is not None:
                    reply.set_result(False)
            case DecideApproval(task_id=task_id, reply=reply):
                if self._is_running(task_id):
                    self._tell_running(message)
                elif reply is not None:
                    reply.set_result("not_live")
            case Closing(reason=reason):
                self.close_reason, self.closing = reason, True
            case StopAll(reason=reason, reply=reply):
                for entry in list(self.waiting):
                    self._stop_task(entry.spec.task_id, reason, None)
                if self.running is not None:
                    self._tell_running(StopTask(self.running[0].spec.task_id, reason))
                if reply is not None:
                    self.stop_all_replies.append(reply)
        self._answer_stop_all()
        self._report_idleness()

    def _report_idleness(self) -> None:
        """Tell the runtime when nothing is left to run (it may stop us to save a thread)."""
        if self.in_line and not self.waiting and not self.answered_waits:
            # nothing to wait for: leave the line (unless a grant is already on its way)
            self.in_line = not self.deps.slots.leave_line(self.actor_ref)
        idle = self.running is None and not self.waiting
        if idle and not self.idle:
            self.deps.on_session_idle(self.session_id, self.submitted)
        self.idle = idle

    def _holds(self, task_id: str) -> bool:
        return self._is_running(task_id) or any(e.spec.task_id == task_id for e in self.waiting)

    def _is_running(self, task_id: str) -> bool:
        return self.running is not None and self.running[0].spec.task_id == task_id

    def _tell_running(self, message: StopTask | UserInput | DecideApproval | SlotGranted) -> None:
        """Tell the running task; if it has just stopped, its `TaskEnded` is on the way.

        A stop first unblocks the task's log: an event it waits to log for the store
        (an outage) is held at once, so the task reads the stop now, not after it.
        """
        assert self.running is not None
        if isinstance(message, StopTask):
            self.running[0].events.unblock()
        try:
            self.running[1].tell(message)
        except pykka.ActorDeadError:
            if isinstance(message, SlotGranted):
                return  # its `TaskEnded` gives the slot back
            if message.reply is not None and not message.reply.done():
                answer = {StopTask: None, UserInput: False, DecideApproval: "not_live"}
                message.reply.set_result(answer[type(message)])  # type: ignore[arg-type]

    def _start_next(self) -> None:
        """Start the first waiting task if none runs and a global slot is ours."""
        if self.running is not None:
            return
        if not self.waiting:
            self._release_slot()
            return
        if not self._want_slot():
            return
        entry = self.waiting[0]
        if not self._claim(entry):
            return
        self.waiting.popleft()
        self.deps.store.touch_session(self.session_id)
        entry.events.emit(Status(status="running", message="Task started"), wait=False)
        task = TaskActor.start(entry.spec, entry.events, self.deps, self.actor_ref)
        self.running = (entry, task)

    def _claim(self, entry: _Entry) -> bool:
        """Whether this node may start the entry's run now (with nodes, the store claims it).

        Another node has it, or this one was taken over: the entry is dropped, unstarted
        (the node that has the run has the task). The store cannot answer, or a claim in
        flight holds the row: it stays first in line, and the start is tried again in a
        second (one try pending at a time).
        """
        task_id = entry.spec.task_id
        try:
            claimed = self.deps.store.claim_run(task_id)
        except StoreError as exc:
            log.warning("task_claim_failed", task_id=task_id, error=str(exc))
            if self.retry is None:  # (one try pending at a time, whatever asked for a start)
                self.retry = threading.Timer(1.0, self._retry_start)
                self.retry.daemon = True
                self.retry.start()
            return False
        if not claimed:
            log.warning("task_claimed_elsewhere", task_id=task_id, session_id=self.session_id)
            self.waiting.popleft()
            self._start_next()
        return claimed

    def _retry_start(self) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # (stopped meanwhile)
            self.actor_ref.tell(RetryStart())

    def _want_slot(self) -> bool:
        """True if a slot is ours; otherwise we are in line and a `SlotGranted` will come."""
        if not self.has_slot and not self.in_line:
            self.has_slot = self.deps.slots.try_acquire(self.actor_ref, self.user)
            self.in_line = not self.has_slot
        return self.has_slot

    def _unpark(self) -> None:
        """The answered task has its slot again: let it go on."""
        self.answered_waits = False
        self._tell_running(SlotGranted())

    def _show_queued(self, entry: _Entry) -> None:
        entry.events.emit(
            Status(status="queued", message="Input received; waiting for a free task slot"),
            wait=False,
        )

    def _release_slot(self) -> None:
        if self.has_slot:
            self.has_slot = False
            self.deps.slots.release(self.actor_ref)

    def _stop_task(self, task_id: str, reason: str, reply: Future[str | None] | None) -> None:
        if self.running is not None and self.running[0].spec.task_id == task_id:
            self._tell_running(StopTask(task_id, reason, reply))
            return
        for entry in self.waiting:
            if entry.spec.task_id == task_id:
                self.waiting.remove(entry)
                entry.events.emit(Status(status="stopped", message=reason), close=True)
                if reply is not None:
                    reply.set_result("stopped")
                if not self.waiting and self.running is None:
                    self._release_slot()
                return
        if reply is not None:
            reply.set_result(None)  # not live here: it already ended

    def _answer_stop_all(self) -> None:
        if self.running is None and not self.waiting:
            for reply in self.stop_all_replies:
                if not reply.done():
                    reply.set_result(None)
            self.stop_all_replies.clear()

    def on_stop(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
        if self.running is not None:
            self._tell_running(StopTask(self.running[0].spec.task_id, self.close_reason))
        self.has_slot = self.in_line = False
        self.deps.slots.release(self.actor_ref)  # also a slot granted on the way to us

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("session_actor_crashed", session_id=self.session_id, error=repr(exception_value))
        self.on_stop()
