"""`BlockingRuntime`: the embedding API for code without an event loop.

It runs a `Runtime` on a background event-loop thread and offers the same
methods as plain blocking calls; `events()` is an ordinary iterator.

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
from typing import Any, TypeVar

from minidevin.api import Runtime
from minidevin.runtime import schemas
from minidevin.runtime.events import Event
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
        self.runtime = Runtime(settings, **runtime_options)
        self._call(self.runtime.start())

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.runtime.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> BlockingRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create_session(
        self, name: str, working_directory: str, **kw: Any
    ) -> schemas.SessionCreated:
        return self._call(self.runtime.create_session(name, working_directory, **kw))

    def create_task(self, session_id: str, description: str, **fields: Any) -> schemas.TaskCreated:
        return self._call(self.runtime.create_task(session_id, description, **fields))

    def get_task(self, task_id: str, **kw: Any) -> schemas.TaskDetail:
        return self._call(self.runtime.get_task(task_id, **kw))

    def stop_task(self, task_id: str, **kw: Any) -> schemas.TaskStopped:
        return self._call(self.runtime.stop_task(task_id, **kw))

    def send_input(self, task_id: str, content: str, **kw: Any) -> bool:
        return self._call(self.runtime.send_input(task_id, content, **kw))

    def wait(self, task_id: str, timeout: float | None = None, **kw: Any) -> schemas.TaskDetail:
        return self._call(self.runtime.wait(task_id, **kw), timeout)

    def list_artifacts(self, task_id: str, **kw: Any) -> list[schemas.Artifact]:
        return self._call(self.runtime.list_artifacts(task_id, **kw))

    def events(self, task_id: str, *, after: int = 0, **kw: Any) -> Iterator[Event]:
        """The task's events as a blocking iterator (history, then live, until it ends)."""
        import queue

        items: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for event in self.runtime.events(task_id, after=after, **kw):
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
