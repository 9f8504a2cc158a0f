"""Task events: the append-only log that is both the WebSocket stream and history.

Each event has a per-task `seq` (1, 2, 3, ...), a `type` with its fields (one
pydantic model per type, `runtime/event_types.py`: the API document's six plus
ours), and a timestamp. The WebSocket message is the event's fields plus
`type`, `timestamp`, `seq` and `task_id`. Events are emitted typed, through
`TaskEventLog.emit`, and stored as their JSON fields.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from minidevin.runtime.event_types import Error, EventBody, Status, event_data
from minidevin.runtime.redaction import Redactor
from minidevin.runtime.wire import dumps

FINAL_STATUSES = frozenset({"completed", "failed", "stopped"})


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with a `Z`, as in the API document."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_ns(timestamp: str) -> int:
    """A timestamp as `utc_now` writes it, in nanoseconds since the epoch (exact to its
    microseconds); `ValueError` if it is not one."""
    when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


@dataclass(frozen=True, slots=True)
class Event:
    task_id: str
    seq: int
    type: str
    data: dict[str, Any]
    timestamp: str
    _wire: str | None = field(default=None, init=False, repr=False, compare=False)

    def wire(self) -> str:
        """The WebSocket message as JSON text, serialized once and cached: every
        subscriber of a live event sends this same string. At most 1 MiB (an event
        larger than that has its longest strings cut: `runtime/wire.py`)."""
        text = self._wire
        if text is None:
            text = dumps(self.to_message())
            object.__setattr__(self, "_wire", text)
        return text

    def to_message(self) -> dict[str, Any]:
        return {
            "type": self.type,
            **self.data,
            "timestamp": self.timestamp,
            "seq": self.seq,
            "task_id": self.task_id,
        }

    @property
    def is_final(self) -> bool:
        """True for the `status` event that ends a task's stream."""
        return self.type == "status" and self.data.get("status") in FINAL_STATUSES


EventSink = Callable[[Event], None]
# waits while the store cannot commit (or until the event is set); returns why the
# task must stop, or None to go on
Backpressure = Callable[[threading.Event], "str | None"]
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"


class TaskEventLog:
    """Assigns `seq` numbers for one task and hands events, in order, to a sink.

    Thread-safe: the TaskActor and its ModelActor both emit. The lock spans the
    hand-off, so the sink sees events in `seq` order.
    """

    def __init__(
        self,
        task_id: str,
        sink: EventSink,
        last_seq: int = 0,
        backpressure: Backpressure | None = None,
    ) -> None:
        self.task_id = task_id
        self._sink = sink
        self._seq = last_seq
        self._lock = threading.Lock()
        self._closed = False
        self._backpressure = backpressure
        self._unblocked = threading.Event()  # set: the task is stopping, nothing waits
        # the task's secrets, masked in every event; a token's end that may begin a value
        # is held back until the next delta shows it is not one (`runtime/redaction.py`)
        self.redactor: Redactor | None = None
        self._held_text = ""
        self.lost: str | None = None  # why the log closed itself (a store outage)
        # told (on the emitting thread) when the log closed itself for a store outage
        self.on_store_lost: Callable[[str], None] = lambda detail: None

    def unblock(self) -> None:
        """The task is stopping: from now on no event waits for the store (any thread)."""
        self._unblocked.set()

    def emit(self, body: EventBody, *, close: bool = False, wait: bool = True) -> Event | None:
        """Append an event; after `close()` (the task ended) this does nothing.

        With `close`, the log closes with this event, atomically: a final status is
        the last event even while another thread (a model stream) still emits.

        Backpressure: while the store cannot commit, the emitting thread waits here
        (outside the lock), up to the store's retry window; past it, the log closes
        itself with an `error` STORE_UNAVAILABLE and a `failed` status (held with the
        rest until the store commits again) and this event is not logged. Events that
        must not wait (`close`, or `wait=False`: a task's last events, what its
        session writes for it) are held at once, so a task can always end (a stop
        during an outage too) and a session actor is never held up.
        """
        data = event_data(body)
        lost = None
        if wait and not close and self._backpressure is not None and not self._closed:
            lost = self._backpressure(self._unblocked)  # (outside the lock)
        with self._lock:
            if self._closed:
                return None
            if lost is None:
                if self.redactor is not None:
                    data = self._mask(body.type, data)
                    if data is None:
                        return None  # (all of it held back, for now)
                self._closed = close
                return self._append(body.type, data)
            self._close_for_store(lost)
        self.on_store_lost(lost)
        return None

    def _append(self, type_: str, data: dict[str, Any]) -> Event:
        self._seq += 1
        event = Event(self.task_id, self._seq, type_, data, utc_now())
        self._sink(event)
        return event

    def _mask(self, type_: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """`data` with the secrets masked (a token's text: what can be sent yet)."""
        assert self.redactor is not None
        if type_ == "token":
            ready, self._held_text = self.redactor.stream(self._held_text, data["content"])
            return {**data, "content": ready} if ready else None
        if self._held_text:  # it did not become a value: it goes before this event
            self._append("token", {"content": self._held_text})
            self._held_text = ""
        return self.redactor.value(data)

    def _close_for_store(self, detail: str) -> None:
        self._closed, self.lost = True, detail
        for body in (
            Error(error=detail, code=STORE_UNAVAILABLE),
            Status(status="failed", message="Task stopped: the database could not be written"),
        ):
            self._append(body.type, event_data(body))

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_seq(self) -> int:
        return self._seq
