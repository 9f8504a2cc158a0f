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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from minidevin.runtime.event_types import EventBody, event_data

FINAL_STATUSES = frozenset({"completed", "failed", "stopped"})


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with a `Z`, as in the API document."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    task_id: str
    seq: int
    type: str
    data: dict[str, Any]
    timestamp: str

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


class TaskEventLog:
    """Assigns `seq` numbers for one task and hands events, in order, to a sink.

    Thread-safe: the TaskActor and its ModelActor both emit. The lock spans the
    hand-off, so the sink sees events in `seq` order.
    """

    def __init__(self, task_id: str, sink: EventSink, last_seq: int = 0) -> None:
        self.task_id = task_id
        self._sink = sink
        self._seq = last_seq
        self._lock = threading.Lock()
        self._closed = False

    def emit(self, body: EventBody, *, close: bool = False) -> Event | None:
        """Append an event; after `close()` (the task ended) this does nothing.

        With `close`, the log closes with this event, atomically: a final status is
        the last event even while another thread (a model stream) still emits.
        """
        data = event_data(body)
        with self._lock:
            if self._closed:
                return None
            self._closed = close
            self._seq += 1
            event = Event(self.task_id, self._seq, body.type, data, utc_now())
            self._sink(event)
            return event

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_seq(self) -> int:
        return self._seq
