"""What actors share: settings, the store's write queue, the provider registry."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.providers.retry import RetryPolicy
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import Store


class TaskSlots:
    """The caps on running tasks, shared by every SessionActor.

    `limit` tasks run at once in all (`MINIDEVIN_MAX_CONCURRENT_TASKS`), and at
    most `per_user` of one user (`MINIDEVIN_MAX_TASKS_PER_USER`). A session holds
    at most one slot. `try_acquire` takes a slot or puts the session in a FIFO
    line; `release` frees it and hands free slots straight to the first sessions
    in line whose user is under their own cap (a `SlotGranted` tell), so a user
    at their cap never holds up other users' sessions behind them.
    """

    def __init__(self, limit: int, per_user: int | None = None) -> None:
        self.limit = limit
        self.per_user = per_user or limit
        self._holders: dict[pykka.ActorRef, str] = {}  # session -> its user
        self._users: dict[str, int] = {}
        self._line: deque[tuple[pykka.ActorRef, str]] = deque()
        self._lock = threading.Lock()

    def try_acquire(self, session: pykka.ActorRef, user: str = "") -> bool:
        with self._lock:
            if session in self._holders:
                return True
            if self._free_for(user):
                self._take(session, user)
                return True
            if all(waiting is not session for waiting, _ in self._line):
                self._line.append((session, user))
            return False

    def release(self, session: pykka.ActorRef) -> None:
        """Free the session's slot (if it holds one) and take it out of the line."""
        with self._lock:
            self._remove_from_line(session)
            user = self._holders.pop(session, None)
            if user is None:
                return
            left = self._users[user] - 1
            if left:
                self._users[user] = left
            else:
                del self._users[user]
            self._grant()

    def leave_line(self, session: pykka.ActorRef) -> bool:
        """Leave the line; False if not in it (then a grant may be on its way)."""
        with self._lock:
            return self._remove_from_line(session)

    def running(self, user: str | None = None) -> int:
        """Slots taken, in all or by one user."""
        with self._lock:
            return len(self._holders) if user is None else self._users.get(user, 0)

    def _remove_from_line(self, session: pykka.ActorRef) -> bool:
        for entry in self._line:
            if entry[0] is session:
                self._line.remove(entry)
                return True
        return False

    def _free_for(self, user: str) -> bool:
        return len(self._holders) < self.limit and self._users.get(user, 0) < self.per_user

    def _take(self, session: pykka.ActorRef, user: str) -> None:
        self._holders[session] = user
        self._users[user] = self._users.get(user, 0) + 1

    def _grant(self) -> None:
        """Hand free slots to the sessions in line that may take one, in arrival order."""
        from minidevin.actors.messages import SlotGranted

        for entry in list(self._line):
            if len(self._holders) >= self.limit:
                return
            session, user = entry
            if not self._free_for(user):
                continue
            self._line.remove(entry)
            try:
                session.tell(SlotGranted())
            except pykka.ActorDeadError:
                continue
            self._take(session, user)


def _ignore_idle(session_id: str, submitted: int) -> None:
    pass


@dataclass(frozen=True)
class Deps:
    settings: Settings
    store: Store
    providers: ProviderRegistry
    slots: TaskSlots
    # called (from the session's thread) when a session has nothing left to run
    on_session_idle: Callable[[str, int], None] = _ignore_idle
    # the users' secrets (`runtime/secrets_store.Secrets`), set once the runtime started
    secrets: Any = None

    @property
    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            max_attempts=s.provider_max_attempts,
            base_delay=s.provider_retry_base_delay,
            max_delay=s.provider_retry_max_delay,
            max_total=s.provider_retry_total,
            max_retry_after=s.provider_max_retry_delay,
            stall_seconds=s.provider_stall_seconds,
            max_output_bytes=s.max_turn_output_bytes,
            token_coalesce_ms=s.token_coalesce_ms,
        )
