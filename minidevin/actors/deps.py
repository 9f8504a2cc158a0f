"""What actors share: settings, the store's write queue, the provider registry."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pykka

from minidevin.runtime.providers.registry import ProviderRegistry
from minidevin.runtime.providers.retry import RetryPolicy
from minidevin.runtime.settings import Settings
from minidevin.runtime.store import Store


class TaskSlots:
    """The global cap on running tasks, shared by every SessionActor.

    `try_acquire` takes a slot or puts the session in a FIFO line; `release`
    hands the slot straight to the next session in line (a `SlotGranted` tell).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._line: deque[pykka.ActorRef] = deque()
        self._lock = threading.Lock()

    def try_acquire(self, session: pykka.ActorRef) -> bool:
        with self._lock:
            if self._used < self.limit:
                self._used += 1
                return True
            if session not in self._line:
                self._line.append(session)
            return False

    def release(self) -> None:
        from minidevin.actors.messages import SlotGranted

        with self._lock:
            while self._line:
                session = self._line.popleft()
                if session.is_alive():
                    session.tell(SlotGranted())
                    return
            self._used -= 1

    def leave_line(self, session: pykka.ActorRef) -> None:
        with self._lock:
            if session in self._line:
                self._line.remove(session)


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

    @property
    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            max_attempts=s.provider_max_attempts,
            base_delay=s.provider_retry_base_delay,
            max_delay=s.provider_retry_max_delay,
            max_total=s.provider_retry_total,
        )
