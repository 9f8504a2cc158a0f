"""`Runtime`: the programmatic face of minidevin, used by the HTTP layer and embedders.

All methods are coroutines on the runtime's event loop. Commands go to actors
as messages (answers come back through `concurrent.futures.Future`s, never a
blocking pykka `get()` on the loop); queries read the store.

    async with Runtime(Settings.from_env()) as runtime:
        session = await runtime.create_session("demo", "/path/to/repo")
        task = await runtime.create_task(session.id, "Fix the failing test")
        async for event in runtime.events(task.id):
            print(event.to_message())
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pykka
import structlog

from minidevin.actors.deps import Deps, TaskSlots
from minidevin.actors.messages import StopAll, SubmitTask, TaskSpec
from minidevin.actors.session import SessionActor
from minidevin.admission import TaskAdmission, new_spec
from minidevin.nodes import LOCAL
from minidevin.resume import check_resumable, resumed_spec
from minidevin.runtime import schemas
from minidevin.runtime.accounts import Accounts
from minidevin.runtime.artifacts import ArtifactCopies
from minidevin.runtime.data_lock import DataDirLock
from minidevin.runtime.errors import Conflict, NotFound
from minidevin.runtime.events import utc_now
from minidevin.runtime.hub import EventHub
from minidevin.runtime.logging import use_host_logging
from minidevin.runtime.pagination import Page, check_limit, decode_cursor
from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.redaction import Redactor
from minidevin.runtime.retention import RetentionSweeper
from minidevin.runtime.secrets_store import Secrets
from minidevin.runtime.settings import Settings
from minidevin.runtime.snapshot_warmer import SnapshotWarmer
from minidevin.runtime.storage import new_id, open_store
from minidevin.runtime.storage.open_errors import data_dir_error
from minidevin.runtime.tracing import remember_request
from minidevin.runtime.webhooks import WebhookDeliverer
from minidevin.runtime.workspace import Workspaces
from minidevin.session_control import SessionControl
from minidevin.startup import open_runtime

if TYPE_CHECKING:
    from minidevin.leases import Leases

log = structlog.get_logger(__name__)


class Runtime(SessionControl):
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        provider_env: Mapping[str, str] | None = None,
        providers: ProviderRegistry | None = None,
        restart_queue: bool = True,
    ) -> None:
        """`restart_queue=False`: tasks a stopped server left queued stay queued, untouched
        (for the next server), instead of running in this runtime."""
        self.settings = settings or Settings.from_env()
        self._restart_queue = restart_queue
        use_host_logging()  # an embedding's structlog or `logging`, never stdout
        self.store = open_store(self.settings)
        self.hub = EventHub(self.settings.subscriber_queue_size)
        self.providers = providers or ProviderRegistry(
            provider_env,
            timeout=self.settings.provider_timeout,
            azure_deployments=self.settings.azure_deployments,
            prices=self.settings.model_prices,
            context_windows=self.settings.context_windows,
        )
        self.slots = TaskSlots(self.settings.max_concurrent_tasks, self.settings.max_tasks_per_user)
        self.deps = Deps(
            self.settings, self.store, self.providers, self.slots, self._session_idle_threadsafe
        )
        self.accounts: Accounts
        self.webhooks: WebhookDeliverer | None = None
        self.secrets: Secrets
        self._sessions: dict[str, pykka.ActorRef] = {}
        self._submitted: dict[str, int] = {}  # tasks handed to each live session actor
        self._local_user: str | None = None
        self._local_user_lock = asyncio.Lock()
        self.workspaces = Workspaces(self.store, self.settings)
        self.admission = TaskAdmission(self.settings, self.providers, self.workspaces)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._data_lock = DataDirLock(self.settings.data_dir)
        self.retention: RetentionSweeper | None = None
        self.warmer = SnapshotWarmer(self.settings.snapshots_dir)
        self.artifact_copies = ArtifactCopies(
            self.settings.artifacts_dir, sync=self.settings.sync == "full"
        )
        self.leases: Leases | None = None  # with nodes: this node's lease, the others' watched
        self._session_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> Runtime:
        """Lock the data directory (or raise `DataDirInUse`), open the store, recover."""
        self._loop = asyncio.get_running_loop()
        # first of all: a directory another runtime holds is neither read nor changed
        try:
            await asyncio.to_thread(self._data_lock.acquire)
        except OSError as exc:  # a read-only or unusable directory: `StoreError`, one line
            raise data_dir_error(self.settings.data_dir, exc) from None
        try:
            return await self._start_owned()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.close()  # a half-opened store, before the next owner comes
            self._data_lock.release()
            raise

    async def _start_owned(self) -> Runtime:
        await open_runtime(self)
        return self

    async def close(self) -> None:
        """Stop every task (status `stopped`), stop the actors, flush the store. With nodes,
        only the running tasks stop: the queued ones stay queued, and once this node has let
        its lease go another node takes its sessions over at once and runs them
        (`Leases.stop_here`, `Leases.hand_over`)."""
        if self.leases is not None:
            await self.leases.stop_here(self._sessions)
        else:
            reason = "Server shutting down"
            await asyncio.gather(
                *(self._ask(ref, StopAll, reason) for ref in self._sessions.values()),
                return_exceptions=True,
            )
        for ref in self._sessions.values():
            ref.stop(block=False)
        self._sessions.clear()
        if self.retention is not None:
            await self.retention.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.leases is not None:
            await self.leases.close()  # (the lease let go: this node is gone for the others)
            with contextlib.suppress(Exception):  # (Redis away: the watch takes it over later)
                await self.leases.hand_over()
        if self.nodes is not None:
            await self.nodes.bus.close()
        await self.store.close()
        await asyncio.to_thread(self.warmer.close)
        if hasattr(self, "accounts"):
            self.accounts.close()  # (the password hashing threads)
        self._data_lock.release()  # last: the directory is consistent for the next owner
        log.info("runtime_closed")

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- sessions --------------------------------------------------------------------

    async def owner(self, owner: str | None) -> str:
        if owner is not None:
            return owner
        if self._local_user is None:
            async with self._local_user_lock:  # concurrent first calls create it once
                if self._local_user is None:
                    self._local_user = await self.accounts.local_user_id()
        return self._local_user

    async def _session_row(self, session_id: str, owner: str | None) -> dict[str, Any]:
        row = await self.store.session_row(session_id, await self.owner(owner))
        if row is None:
            raise NotFound("session not found")
        return row

    def _session_actor(self, session_id: str) -> pykka.ActorRef:
        ref = self._sessions.get(session_id)
        if ref is None or not ref.is_alive():
            ref = SessionActor.start(session_id, self.deps)
            self._sessions[session_id] = ref
            self._submitted[session_id] = 0
        return ref

    def _session_idle_threadsafe(self, session_id: str, submitted: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(
                self._loop.call_later,
                self.settings.session_idle_seconds,
                self._stop_if_idle,
                session_id,
                submitted,
            )

    def _stop_if_idle(self, session_id: str, submitted: int) -> None:
        """Stop a session actor that got no task since it went idle; it restarts on demand."""
        ref = self._sessions.get(session_id)
        if ref is not None and self._submitted.get(session_id) == submitted:
            del self._sessions[session_id], self._submitted[session_id]
            ref.stop(block=False)
            log.debug("session_actor_idle_stopped", session_id=session_id)

    @property
    def live_session_actors(self) -> int:
        return len(self._sessions)

    # -- tasks ----------------------------------------------------------------------------

    async def create_task(
        self,
        session_id: str,
        request: schemas.TaskRequest | str,
        *,
        owner: str | None = None,
        **fields: Any,
    ) -> schemas.TaskCreated:
        """Create a task and hand it to its session (it runs now, or queues)."""
        if isinstance(request, str):
            request = schemas.TaskRequest(description=request, **fields)
        session = await self._session_row(session_id, owner)
        answer = await self._elsewhere(
            session_id, "create_task", session_id=session_id,
            request=request.model_dump(mode="json"), owner=session["user_id"],
        )  # fmt: skip
        if answer is not LOCAL:
            return answer  # type: ignore[no-any-return]
        model, identity = await self.admission.admit(session, request.model, await self.owner(None))
        if names := json.loads(session["secrets"] or "[]"):  # never stored in clear, even here
            values = await self.secrets.values(session["user_id"], names)
            masked = Redactor(values).text(request.description) if values else None
            if masked is not None and masked != request.description:
                request = request.model_copy(update={"description": masked})
        task_id = new_id()
        created_at = utc_now()
        max_iterations = request.max_iterations or self.settings.max_iterations
        async with self._session_lock(session_id):
            await self._session_row(session_id, owner)  # (not deleted meanwhile)
            spec = self._with_mcp(  # (opened first: a key that cannot open it stores nothing)
                new_spec(task_id, session, request, model, identity, self.settings), session
            )
            await self.store.insert_task(
                task_id, session_id, request, model, max_iterations, created_at,
                spec.approval_policy,
            )  # fmt: skip
            status = await self._submit(spec)
        return schemas.TaskCreated(
            id=task_id, description=request.description, status=status, created_at=created_at
        )

    async def resume_task(
        self,
        task_id: str,
        request: schemas.ResumeRequest | None = None,
        *,
        owner: str | None = None,
        **fields: Any,
    ) -> schemas.TaskDetail:
        """Continue a task that ended `failed` or `stopped` (see `minidevin.resume`).

        `Conflict` (409) for a task that is live or completed.
        """
        request = request or schemas.ResumeRequest(**fields)
        first = await self._task_row(task_id, owner)
        session_id = first["session_id"]
        answer = await self._elsewhere(
            session_id, "resume_task", task_id=task_id,
            request=request.model_dump(mode="json"), owner=await self.owner(owner),
        )  # fmt: skip
        if answer is not LOCAL:
            return answer  # type: ignore[no-any-return]
        async with self._session_lock(session_id):  # one resume or create at a time, no delete
            await self.store.flush()
            row = await self._task_row(task_id, owner)
            check_resumable(row)
            session = await self._session_row(session_id, owner)
            model, identity = await self.admission.admit(
                session, row["model"], await self.owner(None)
            )
            newest = await self.store.last_event(task_id)
            spec = resumed_spec(row, session, request, model, identity, newest)
            await self.store.set_aside_artifacts(task_id)  # the earlier run's
            if await self._submit(self._with_mcp(spec, session)) == "conflict":
                raise Conflict("the task is still live; try again once it has ended")
        return await self.get_task(task_id, owner=owner)

    def _with_mcp(self, spec: TaskSpec, session: dict[str, Any]) -> TaskSpec:
        """`spec` with its session's MCP servers, opened from their sealed column."""
        sealed = session.get("mcp_config")
        if not sealed:
            return spec
        return dataclasses.replace(spec, mcp_servers=tuple(json.loads(self.secrets.open(sealed))))

    def _session_lock(self, session_id: str) -> asyncio.Lock:
        """Held while a task is created or resumed in the session, and while it is deleted:
        a task is never handed to a session that is going away."""
        lock = self._session_locks.get(session_id)
        if lock is None:
            lock = self._session_locks[session_id] = asyncio.Lock()
        return lock

    async def _submit(self, spec: TaskSpec) -> str:
        """Hand a task to its session actor: "running", "queued" (or "conflict")."""
        remember_request(spec.task_id)  # (a trace's request span: the task run's parent)
        actor = self._session_actor(spec.session_id)
        self._submitted[spec.session_id] += 1
        status = await self._ask(actor, SubmitTask, spec)
        await self.store.flush()
        return str(status)

    async def list_tasks(
        self,
        session_id: str,
        *,
        owner: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[schemas.TaskSummary]:
        """The session's tasks, oldest first: all of them, or pages as `list_sessions`."""
        limit, after = check_limit(limit), decode_cursor("tasks", cursor)
        await self._session_row(session_id, owner)
        return await self.store.list_tasks(session_id, limit=limit, after=after)
