"""`BlockingRuntime`: the embedding API for code without an event loop.

It runs a `Runtime` on a background event-loop thread and offers each of its
public calls, with the same parameters, as a plain blocking call (the
constructor starts the runtime, `close()` closes it); `events()` is an
ordinary iterator and `wait()` takes a `timeout` in seconds.

    with BlockingRuntime(Settings.from_env()) as runtime:
        session = runtime.create_session("demo", "/path/to/repo")
        task = runtime.create_task(session.id, "Fix the failing test")
        for event in runtime.events(task.id):
            print(event.to_message())
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from minidevin.api import Runtime
from minidevin.runtime import schemas
from minidevin.runtime.events import Event
from minidevin.runtime.mcp.config import McpServer
from minidevin.runtime.pagination import Page
from minidevin.runtime.settings import Settings

T = TypeVar("T")
_DONE = object()


class BlockingRuntime:
    def __init__(self, settings: Settings | None = None, **runtime_options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="minidevin-loop", daemon=True
        )
        self._thread.start()
        try:
            self.runtime = Runtime(settings, **runtime_options)
            self._call(self.runtime.start())
        except BaseException:  # e.g. `DataDirInUse`: no loop thread is left behind
            self._stop_loop()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # (a `wait` given up on leaves nothing running on the loop)
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.runtime.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BlockingRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def owner(self, owner: str | None = None) -> str:
        """The user id `owner` names, or (None) the local user's, created on first use."""
        return self._call(self.runtime.owner(owner))

    # -- sessions --------------------------------------------------------------------

    def create_session(
        self,
        name: str,
        working_directory: str | Path,
        *,
        owner: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        secrets: list[str] | None = None,
        approval_policy: schemas.ApprovalPolicy = "never",
        mcp_servers: list[McpServer] | None = None,
        node: str | None = None,
    ) -> schemas.SessionCreated:
        return self._call(
            self.runtime.create_session(
                name,
                working_directory,
                owner=owner,
                webhook_url=webhook_url,
                webhook_secret=webhook_secret,
                secrets=secrets,
                approval_policy=approval_policy,
                mcp_servers=mcp_servers,
                node=node,
            )
        )

    def list_sessions(
        self, *, owner: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[schemas.SessionSummary]:
        return self._call(self.runtime.list_sessions(owner=owner, limit=limit, cursor=cursor))

    def get_session(self, session_id: str, *, owner: str | None = None) -> schemas.SessionDetail:
        return self._call(self.runtime.get_session(session_id, owner=owner))

    def session_tools(self, session_id: str, *, owner: str | None = None) -> schemas.SessionTools:
        return self._call(self.runtime.session_tools(session_id, owner=owner))

    def delete_session(self, session_id: str, *, owner: str | None = None) -> None:
        """Stop the session's tasks, then delete it with its tasks, events and artifacts."""
        self._call(self.runtime.delete_session(session_id, owner=owner))

    # -- tasks -----------------------------------------------------------------------

    def create_task(
        self,
        session_id: str,
        request: schemas.TaskRequest | str,
        *,
        owner: str | None = None,
        **fields: Any,
    ) -> schemas.TaskCreated:
        return self._call(self.runtime.create_task(session_id, request, owner=owner, **fields))

    def list_tasks(
        self,
        session_id: str,
        *,
        owner: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[schemas.TaskSummary]:
        return self._call(
            self.runtime.list_tasks(session_id, owner=owner, limit=limit, cursor=cursor)
        )

    def get_task(self, task_id: str, *, owner: str | None = None) -> schemas.TaskDetail:
        return self._call(self.runtime.get_task(task_id, owner=owner))

    def stop_task(self, task_id: str, *, owner: str | None = None) -> schemas.TaskStopped:
        return self._call(self.runtime.stop_task(task_id, owner=owner))

    def resume_task(
        self,
        task_id: str,
        request: schemas.ResumeRequest | None = None,
        *,
        owner: str | None = None,
        **fields: Any,
    ) -> schemas.TaskDetail:
        """Continue a task that ended `failed` or `stopped` (`Conflict` for any other)."""
        return self._call(self.runtime.resume_task(task_id, request, owner=owner, **fields))

    def send_input(self, task_id: str, content: str, *, owner: str | None = None) -> bool:
        return self._call(self.runtime.send_input(task_id, content, owner=owner))

    def decide_approval(
        self,
        task_id: str,
        call_id: str,
        decision: str,
        reason: str | None = None,
        *,
        owner: str | None = None,
    ) -> schemas.ApprovalDecided:
        return self._call(
            self.runtime.decide_approval(task_id, call_id, decision, reason, owner=owner)
        )

    def wait(
        self, task_id: str, timeout: float | None = None, *, owner: str | None = None
    ) -> schemas.TaskDetail:
        """Block until the task has ended (`TimeoutError` after `timeout` seconds)."""
        return self._call(self.runtime.wait(task_id, owner=owner), timeout)

    # -- artifacts -------------------------------------------------------------------

    def list_artifacts(self, task_id: str, *, owner: str | None = None) -> list[schemas.Artifact]:
        return self._call(self.runtime.list_artifacts(task_id, owner=owner))

    def artifact_file(
        self, task_id: str, artifact_id: str, *, owner: str | None = None
    ) -> tuple[dict[str, Any], Path]:
        """The artifact's row and the path of its bytes (on PostgreSQL, for an artifact
        another node made, a copy of the database's bytes: see `Runtime.artifact_file`)."""
        return self._call(self.runtime.artifact_file(task_id, artifact_id, owner=owner))

    def events(self, task_id: str, *, after: int = 0, owner: str | None = None) -> Iterator[Event]:
        """The task's events as a blocking iterator (history, then live, until it ends)."""
        import queue

        items: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for event in self.runtime.events(task_id, after=after, owner=owner):
                    items.put(event)
            except BaseException as exc:
                items.put(exc)
            finally:
                items.put(_DONE)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while (item := items.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()
