"""The storage interface: what the runtime asks of a store, with no SQL in it.

A store is two things behind one object:

- a **repository** of domain methods (users, API keys, revoked tokens,
  sessions, workspace claims, tasks, events, artifacts). Lookups are scoped
  to an owner where the API needs it (`user_id`): another user's id reads as
  missing, so no route can leak whether it exists. Rows come back as plain
  dicts of decoded values (JSON columns as Python values) or as the API's
  `schemas` models.
- an **event sink**: `append(event)` queues an event from any thread without
  blocking; the store commits queued events and writes in order, in batches,
  applies each event's task-row projection (`runtime/projection.py`) in the
  same transaction, and only then hands the events to `on_events_committed`.
  `touch_session` and `add_artifacts` are queued in that same order.
  `generation` grows after every committed change other than bare events (the
  HTTP layer's read cache is current while it has not moved).

A write the caller awaits raises `StoreError` if it cannot be committed
(`AlreadyExists` for a duplicate unique value), which the HTTP layer answers
as 503 `STORE_UNAVAILABLE`. A backend implements `Store`; `open_store` (in
this package) picks one.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from minidevin.runtime import schemas
from minidevin.runtime.events import Event
from minidevin.runtime.pagination import Page
from minidevin.runtime.storage.outage import StoreOutage

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot do what was asked (newer schema, disk full, locked...)."""


class AlreadyExists(StoreError):
    """A write would duplicate a unique value (an email, a key hash...)."""


def new_id() -> str:
    """A new row id (ids are chosen by the caller, not the database)."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class ArtifactRow:
    """An artifact file's metadata, stored beside its task; `file` is where its bytes are
    on this node (a store every node reads, PostgreSQL, stores them with the row)."""

    id: str
    task_id: str
    name: str
    type: str
    content_type: str
    size: int
    created_at: str
    file: Path | None = field(default=None, compare=False)


class EventSink(Protocol):
    """The ordered, batching write side: events and the writes queued with them."""

    generation: int
    on_events_committed: Callable[[list[Event]], None]
    outage: StoreOutage  # while it cannot commit: held events, backpressure, notices
    held: list[Event]  # events waiting for the store to commit again (in order)
    held_events: int

    def append(self, event: Event) -> None:
        """Queue an event from any thread; never blocks."""

    def wait_for_room(self, unblocked: threading.Event | None = None) -> str | None:
        """From an emitting thread, before an event: wait while the store cannot commit,
        up to its retry window (or until `unblocked` is set). None to go on; past the
        window, why the task must stop."""

    async def flush(self) -> None:
        """Wait until everything queued before this call is committed."""

    def call_blocking(self, read: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """From another thread (an actor): run `read()` on the store's loop once
        everything queued so far is committed, and wait for its answer."""
        ...


class Repository(Protocol):
    """Domain reads and writes. Rows are dicts of decoded column values."""

    # -- users, API keys, revoked tokens -----------------------------------------------
    async def insert_user(
        self, email: str, name: str, password_hash: str | None
    ) -> schemas.User: ...
    async def user_by_email(self, email: str) -> dict[str, Any] | None:
        """id, email, name, password_hash, token_version, created_at."""
        ...

    def has_users_besides(self, email: str) -> bool:
        """True if any user but the one with `email` exists (answered at once)."""
        ...

    async def password_hash(self, user_id: str) -> str | None: ...
    async def token_version(self, user_id: str) -> int | None:
        """The user's token version; None if there is no such user."""
        ...

    async def set_password(self, user_id: str, password_hash: str) -> None:
        """New password hash; the token version goes up by one."""
        ...

    async def revoke_token(self, jti: str, user_id: str, expires_at: float, now: float) -> None:
        """Refuse token `jti` from now on (and forget revocations expired by `now`)."""
        ...

    async def token_revoked(self, jti: str) -> bool: ...
    async def insert_api_key(
        self,
        key: schemas.ApiKey,
        user_id: str,
        key_hash: str,
        prefix: str,
        parent_key_id: str | None,
    ) -> None: ...
    async def list_api_keys(self, user_id: str) -> list[schemas.ApiKey]:
        """The user's live (unrevoked) keys, oldest first."""
        ...

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        """id, user_id, expires_at, revoked_at."""
        ...

    async def revoke_api_key(self, user_id: str, key_id: str, now: str) -> set[str] | None:
        """Revoke the user's live key and every key it created (and theirs...);
        the ids of that chain, or None if the user has no such live key."""
        ...

    async def revoke_user_api_keys(self, user_id: str, now: str) -> None: ...

    # -- secrets (values sealed by `runtime/secrets_store.py`) -------------------------
    async def put_secret(
        self, user_id: str, name: str, sealed: bytes, now: str
    ) -> schemas.SecretInfo:
        """Insert or replace; a replaced secret keeps its `created_at`."""
        ...

    async def list_secrets(self, user_id: str) -> list[schemas.SecretInfo]: ...

    async def delete_secret(self, user_id: str, name: str) -> bool:
        """False if the user has no such secret."""
        ...

    async def session_secret_names(self, session_id: str) -> list[str]:
        """The secrets a session hands its tasks' commands."""
        ...

    async def secret_values(self, user_id: str, names: list[str]) -> dict[str, bytes]:
        """The sealed values of those of `names` the user has."""
        ...

    # -- sessions and working directories -----------------------------------------------
    async def insert_session(
        self, user_id: str, name: str, working_directory: str, **options: Any
    ) -> schemas.SessionCreated:
        """A new session; `options` are `SESSION_OPTIONS` (see `session_options`)."""
        ...

    async def list_sessions(
        self, user_id: str, *, limit: int | None = None, after: tuple[str, int] | None = None
    ) -> Page[schemas.SessionSummary]:
        """The user's sessions, newest first: at most `limit`, those past `after`
        ((created_at, rowid) of the last session of the previous page); the page's
        `next_cursor` reads on (None: no more)."""
        ...

    async def session_row(self, session_id: str, user_id: str) -> dict[str, Any] | None:
        """id, user_id, name, status, working_directory, created_at, updated_at."""
        ...

    async def session_detail(
        self, session_id: str, user_id: str
    ) -> schemas.SessionDetail | None: ...
    def touch_session(self, session_id: str) -> None:
        """Queue (in order with events, never blocking) a bump of its `updated_at`."""
        ...

    def claim_run(self, task_id: str, timeout: float = 5.0) -> bool:
        """From a session's thread, before the task's next run starts: whether this node may
        start it (with nodes, each run is taken by one node whose generation is current;
        one node alone always may). `StoreError` if the store cannot answer now."""
        ...

    async def delete_session(self, session_id: str) -> list[str]:
        """Delete a session with its tasks, events and artifact rows; its artifact ids."""
        ...

    async def session_node(self, session_id: str) -> tuple[bool, str | None]:
        """(whether the session exists, the node it is placed on: None for none)."""
        ...

    async def place_session(self, session_id: str, node: str, expected: str | None) -> str | None:
        """Place the session on `node` if it is on `expected` now (None: on no node), in one
        statement (nodes race for it); the node it is on after (None: no such session)."""
        ...

    async def sessions_on(self, node: str) -> list[dict[str, Any]]:
        """id, user_id, working_directory of every session placed on `node`."""
        ...

    async def workspace_claims_around(self, path: str) -> list[dict[str, Any]]:
        """Claims (path, user_id) on `path`, on a directory containing it, or inside it."""
        ...

    async def workspace_claim(self, path: str) -> dict[str, Any] | None:
        """path, user_id, st_dev, st_ino, st_uid, st_gid (as strings; the owner's None for a
        claim older than schema version 10, PostgreSQL's 4)."""
        ...

    async def put_workspace_claim(
        self, path: str, user_id: str, identity: tuple[int, int], owner: tuple[int, int]
    ) -> None:
        """Claim `path` for `user_id`, or refresh the identity `(st_dev, st_ino)` and the
        owner `(st_uid, st_gid)` of their own claim on it."""
        ...

    # -- tasks, events, artifacts --------------------------------------------------------
    async def insert_task(
        self,
        task_id: str,
        session_id: str,
        request: schemas.TaskRequest,
        model: str,
        max_iterations: int,
        created_at: str,
    ) -> None:
        """A new task row, `queued`; afterwards only its events change it."""
        ...

    async def task_row(self, task_id: str, user_id: str) -> dict[str, Any] | None:
        """Every column of the user's task (`plan`, `result`, `usage` decoded)."""
        ...

    async def task_owner(self, task_id: str) -> str | None:
        """The user whose session holds the task (None: no such task)."""
        ...

    async def list_tasks(
        self, session_id: str, *, limit: int | None = None, after: tuple[str, int] | None = None
    ) -> Page[schemas.TaskSummary]:
        """The session's tasks, oldest first: at most `limit`, those past `after`
        ((created_at, rowid) of the last task of the previous page); the page's
        `next_cursor` reads on (None: no more)."""
        ...

    async def tasks_before(self, session_id: str, task_id: str) -> list[dict[str, Any]]:
        """id, description, status of the session's tasks created before `task_id`."""
        ...

    async def tasks_with_status(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Every column of the tasks in `statuses`, oldest first."""
        ...

    async def events_after(self, task_id: str, after: int) -> list[Event]:
        """The task's committed events with `seq` above `after`, in order."""
        ...

    async def events_page(self, task_id: str, after: int, limit: int) -> list[Event]:
        """At most `limit` of the task's committed events with `seq` above `after`, in
        order: one page of a replay (keyset on `seq`, an index range scan)."""
        ...

    async def events_wire_page(
        self, task_id: str, after: int, limit: int
    ) -> list[tuple[int, bool, str]]:
        """`events_page` as WebSocket messages: (seq, is final, message text), built from
        the stored JSON without decoding it (whitespace aside, each text is what
        `Event.wire` gives)."""
        ...

    async def approval_state(self, task_id: str, call_id: str) -> str | None:
        """None if the task's log never asked for `call_id`'s approval; else "pending",
        "approve" or "reject"."""
        ...

    async def task_log(self, task_id: str) -> list[Event]:
        """The task's committed events but its streamed text (`token`, `turn_restart`),
        in order: all a `TaskHistory` needs, a fraction of the log's rows."""
        ...

    async def last_event(self, task_id: str) -> Event | None:
        """The task's newest committed event (a final status is always the last)."""
        ...

    def add_artifacts(self, rows: Sequence[ArtifactRow]) -> None:
        """Queue (in order with events, never blocking) the rows of written artifacts; on
        PostgreSQL each with its file's bytes, in the same statement."""
        ...

    async def set_aside_artifacts(self, task_id: str) -> None:
        """Before a task is resumed: its artifacts so far become `runN-<name>` (run 1, 2,
        ...), so the new run's `plan.json`, `diff.patch` and `trajectory.json` take their
        names."""
        ...

    async def list_artifacts(self, task_id: str) -> list[schemas.Artifact]: ...
    async def artifact_row(self, task_id: str, artifact_id: str) -> dict[str, Any] | None:
        """id, task_id, name, type, content_type, size, created_at."""
        ...

    async def artifact_content_part(
        self, artifact_id: str, offset: int, length: int
    ) -> bytes | None:
        """At most `length` of the artifact's bytes from `offset`, as the database holds
        them (PostgreSQL: any node reads them), fewer at their end; None when it holds none
        (SQLite: the file in the data directory is all)."""
        ...

    # -- idempotency keys ----------------------------------------------------------------
    async def remembered_response(
        self, user_id: str, key: str, since: float
    ) -> dict[str, Any] | None:
        """fingerprint, status, body (bytes), created_at of the response remembered for
        the user under `key` at `since` (a Unix time) or later; None if there is none."""
        ...

    async def remember_response(
        self,
        user_id: str,
        key: str,
        fingerprint: str,
        status: int,
        body: bytes,
        now: float,
        forget_before: float,
    ) -> None:
        """Remember a response under the user's `key` (replacing an expired one), and
        forget every response remembered before `forget_before`."""
        ...

    async def forget_responses(self, before: float) -> None:
        """Forget every response remembered before `before` (a Unix time)."""
        ...

    # -- retention (`runtime/retention.py`) ---------------------------------------------
    async def expired_tasks(self, before: str, limit: int) -> list[dict[str, Any]]:
        """id, session_id of up to `limit` tasks in a final status (completed, failed,
        stopped) that ended (or, with no end, were created) before `before` (ISO 8601)."""
        ...

    async def task_expired(self, task_id: str, before: str) -> bool:
        """Is the task in a final status, ended before `before`?"""
        ...

    async def delete_events_batch(self, task_id: str, limit: int) -> int:
        """Delete the task's oldest `limit` events at most (one short transaction);
        returns how many went (0: none is left)."""
        ...

    async def delete_expired_task(self, task_id: str, before: str) -> list[str] | None:
        """Delete the task (its remaining events, its artifact rows) if it is still
        final and ended before `before`; returns its artifact ids (their files are the
        caller's to remove), or None if it was not deleted."""
        ...

    # -- the webhook outbox (enqueued with each status event; `runtime/webhooks.py`) ---
    async def due_webhooks(self, now: float, max_attempts: int, limit: int) -> list[dict[str, Any]]:
        """Due pending deliveries (id, task_id, seq, url, body, attempts, secret), each the
        earliest pending one of its task, oldest first."""
        ...

    async def next_webhook_due(self, max_attempts: int, after: float = 0.0) -> float | None:
        """When (epoch seconds) the next such delivery is due after `after`; None when
        none is pending."""
        ...

    async def webhook_delivered(self, delivery_id: str, at: str, attempts: int) -> None: ...
    async def forget_webhooks(self, before: float, max_attempts: int) -> None:
        """Delete the deliveries settled (delivered, or given up) before `before` (epoch)."""
        ...

    async def webhook_failed(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None: ...


class Store(Repository, EventSink, Protocol):
    """A storage backend: open it on the runtime's loop, close it to flush."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
