"""The operations on one live task: stop it, answer it, decide its approvals, follow its
events, wait for its end, read its artifacts (a mixin of `Runtime`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import pykka
import structlog

from minidevin.actors.messages import DecideApproval, StopTask, UserInput
from minidevin.nodes import LOCAL, Nodes
from minidevin.runtime import schemas
from minidevin.runtime.artifacts import ArtifactCopies, ContentMismatch
from minidevin.runtime.errors import ApiError, Conflict, NotFound, Unavailable
from minidevin.runtime.events import FINAL_STATUSES, Event
from minidevin.runtime.hub import EventHub, SlowSubscriber, StoreUnavailable
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import StoreError, task_detail
from minidevin.runtime.task_stream import history_then_live

ACTOR_REPLY_TIMEOUT = 10.0
log = structlog.get_logger(__name__)


class TaskControl:
    """A mixin of `Runtime`, whose store, hub and session actors it uses."""

    settings: Settings
    store: Any
    hub: EventHub

    nodes: Nodes | None = None  # with nodes: where sessions run, calls forwarded there
    artifact_copies: ArtifactCopies  # (one per runtime: one copy of an artifact at a time)

    def _session_actor(self, session_id: str) -> pykka.ActorRef:
        raise NotImplementedError  # (the Runtime's)

    async def _runs_here(self, session_id: str) -> bool:
        """Whether the session's actors are this node's (always, without nodes)."""
        return self.nodes is None or await self.nodes.node_of(session_id) == self.nodes.node_id

    async def _elsewhere(self, session_id: str, op: str, /, **args: Any) -> Any:
        """`LOCAL` when the session runs on this node; else its node's answer to `op`."""
        if self.nodes is None:
            return LOCAL
        return await self.nodes.elsewhere(session_id, op, **args)

    async def owner(self, owner: str | None) -> str:
        raise NotImplementedError

    async def get_task(self, task_id: str, *, owner: str | None = None) -> schemas.TaskDetail:
        row = await self._task_row(task_id, owner)
        node = (
            self.settings.node_id
            if self.nodes is None
            else await self.nodes.node_of(row["session_id"])
        )
        return task_detail(row).model_copy(update={"node_id": node})

    async def _task_row(self, task_id: str, owner: str | None) -> dict[str, Any]:
        row = await self.store.task_row(task_id, await self.owner(owner))
        if row is None:
            raise NotFound("task not found")
        return row

    async def stop_task(self, task_id: str, *, owner: str | None = None) -> schemas.TaskStopped:
        """Stop a live task; an ended task keeps (and answers) its final status."""
        row = await self._task_row(task_id, owner)
        if row["status"] in FINAL_STATUSES:
            return schemas.TaskStopped(id=task_id, status=row["status"])
        answer = await self._elsewhere(
            row["session_id"], "stop_task", task_id=task_id, owner=await self.owner(owner)
        )
        if answer is not LOCAL:
            return answer  # type: ignore[no-any-return]
        status = await self._ask(self._session_actor(row["session_id"]), StopTask, task_id)
        await self.store.flush()
        if status is None:
            status = (await self._task_row(task_id, owner))["status"]
        return schemas.TaskStopped(id=task_id, status=status)

    async def send_input(self, task_id: str, content: str, *, owner: str | None = None) -> bool:
        """Answer the task's question, or queue a message for its next model turn.

        False if the task is not live; `InputsFull` (429) if it holds
        `max_pending_inputs` unread inputs already.
        """
        row = await self._task_row(task_id, owner)
        if row["status"] in FINAL_STATUSES:
            return False
        answer = await self._elsewhere(
            row["session_id"], "send_input", task_id=task_id, content=content,
            owner=await self.owner(owner),
        )  # fmt: skip
        if answer is not LOCAL:
            return bool(answer)
        return bool(
            await self._ask(self._session_actor(row["session_id"]), UserInput, task_id, content)
        )

    async def decide_approval(
        self,
        task_id: str,
        call_id: str,
        decision: str,
        reason: str | None = None,
        *,
        owner: str | None = None,
    ) -> schemas.ApprovalDecided:
        """Approve or reject the call the task waits on. `NotFound` (404) for a call the
        task never put to a person; `Conflict` (409) when it was decided already, or the
        task ended or is not waiting on it now."""
        row = await self._task_row(task_id, owner)
        if row["status"] not in FINAL_STATUSES:
            answer = await self._elsewhere(
                row["session_id"], "decide_approval", task_id=task_id, call_id=call_id,
                decision=decision, reason=reason, owner=await self.owner(owner),
            )  # fmt: skip
            if answer is not LOCAL:
                return answer  # type: ignore[no-any-return]
        outcome = "not_live"
        if row["status"] not in FINAL_STATUSES:
            actor = self._session_actor(row["session_id"])
            outcome = await self._ask(actor, DecideApproval, task_id, call_id, decision, reason)
        if outcome in ("approve", "reject"):
            await self.store.flush()
            return schemas.ApprovalDecided(call_id=call_id, decision=outcome)
        if outcome == "not_live":
            try:
                await self.store.flush()
                state = await self.store.approval_state(task_id, call_id)
            except StoreError as exc:
                raise Unavailable(f"the store cannot be read now: {exc}") from None
            outcome = "unknown" if state is None else "decided" if state != "pending" else "ended"
        if outcome == "unknown":
            raise NotFound("no approval was asked for this call")
        if outcome == "decided":
            raise Conflict("this call was already decided")
        raise Conflict("the task is not waiting for this approval (it ended, or waits to run)")

    async def events(
        self, task_id: str, *, after: int = 0, owner: str | None = None
    ) -> AsyncIterator[Event]:
        """The task's history after `after`, then its live events, ending with its final status."""
        await self._task_row(task_id, owner)
        async for event in history_then_live(self.store, self.hub, task_id, after):
            yield event

    async def wait(self, task_id: str, *, owner: str | None = None) -> schemas.TaskDetail:
        """Wait until the task has ended; returns its final details."""
        last = 0
        while True:
            try:
                async for event in self.events(task_id, after=last, owner=owner):
                    last = event.seq
            except SlowSubscriber:  # cut off for lagging: resume where we were
                continue
            except StoreUnavailable:  # resume once the store commits again
                await self.hub.store_back()
                continue
            return await self.get_task(task_id, owner=owner)

    # -- artifacts ------------------------------------------------------------------------

    async def list_artifacts(
        self, task_id: str, *, owner: str | None = None
    ) -> list[schemas.Artifact]:
        await self._task_row(task_id, owner)
        return await self.store.list_artifacts(task_id)

    async def artifact_file(
        self, task_id: str, artifact_id: str, *, owner: str | None = None
    ) -> tuple[dict[str, Any], Path]:
        """The artifact's row and the path of its bytes: this node's file, or on
        PostgreSQL, for an artifact another node made, a copy of the bytes the database
        holds, written into this node's artifacts directory the first time (the same
        bytes and date on every node; `runtime/artifacts.py`)."""
        await self._task_row(task_id, owner)
        row = await self.store.artifact_row(task_id, artifact_id)
        if row is None:
            raise NotFound("artifact not found")
        read_part = partial(self.store.artifact_content_part, artifact_id)
        try:
            path = await self.artifact_copies.path(
                artifact_id, row["size"], row["created_at"], read_part
            )
        except OSError as exc:  # (a full disk: the path is the server's business)
            log.error("artifact_copy_failed", artifact_id=artifact_id, error=str(exc))
            raise Unavailable("the artifact cannot be written on this node; try again") from None
        except ContentMismatch as exc:
            log.error("artifact_content_mismatch", artifact_id=artifact_id, error=str(exc))
            raise ApiError("the artifact's bytes do not match its size") from None
        if path is None:  # (SQLite, or a copied installation whose file was missing)
            raise NotFound("artifact not found")
        return row, path

    # -- helpers ----------------------------------------------------------------------------

    async def _ask(self, ref: pykka.ActorRef, message_type: Any, *args: Any) -> Any:
        """Tell an actor a message carrying a reply future, and await it without blocking."""
        reply: Future[Any] = Future()
        try:
            ref.tell(message_type(*args, reply=reply))
            return await asyncio.wait_for(asyncio.wrap_future(reply), ACTOR_REPLY_TIMEOUT)
        except (TimeoutError, pykka.ActorDeadError):
            raise Unavailable(
                f"the session did not answer within {ACTOR_REPLY_TIMEOUT:.0f} s; try again"
            ) from None
