"""In-process scripted models (registered with `ProviderRegistry.register`).

They stand in for a provider where HTTP to a provider would measure the wrong
thing: a token's creation time is taken in the model itself, on the ModelActor's
thread, so the latency figure is the runtime's path (actor -> store -> hub ->
WebSocket), not a provider's stream.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.providers.base import ModelTurn, TokenSink, ToolCall, Usage
from minidevin.runtime.providers.registry import ProviderRegistry


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


class PacedTokens:
    """Waits for `gate`, then emits `tokens` tokens at `rate`/s, each carrying its creation ns.

    The first token comes after a random phase (so parallel tasks do not tick in
    lockstep); the schedule is absolute, so a late token does not delay the rest.
    """

    model_id = "bench-paced"

    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.rate = rate
        self.gate = threading.Event()
        self.emitted = Counter()
        self.waiting = Counter()

    def register(self, providers: ProviderRegistry) -> None:
        providers.register(self.model_id, lambda: self)  # stateless per turn: share it

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        self.waiting.add()
        while not self.gate.wait(0.05):
            cancel.raise_if_set()
        interval = 1 / self.rate
        due = time.perf_counter() + random.uniform(0, interval)
        for _ in range(self.tokens):
            delay = due - time.perf_counter()
            if delay > 0 and cancel.wait(delay):
                raise Cancelled()
            on_token(f"{time.perf_counter_ns()} ")
            self.emitted.add()
            due += interval
        return ModelTurn(text="done", usage=Usage(10, self.tokens), finish_reason="stop")


class Blocking:
    """Each turn blocks until `release()` (or its task is stopped), then ends the task."""

    model_id = "bench-blocking"

    def __init__(self) -> None:
        self.running = Counter()
        self._lock = threading.Lock()
        self._released = False
        self._waiters: list[threading.Event] = []

    def register(self, providers: ProviderRegistry) -> None:
        providers.register(self.model_id, lambda: self)

    def release(self) -> None:
        with self._lock:
            self._released = True
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set()

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        wake = threading.Event()
        with self._lock:
            if self._released:
                wake.set()
            else:
                self._waiters.append(wake)
        unregister = cancel.on_cancel(wake.set)
        self.running.add()
        try:
            wake.wait()
        finally:
            unregister()
        cancel.raise_if_set()
        return ModelTurn(text="released", finish_reason="stop")


class OneCommand:
    """First turn: `terminal` runs `command`; any later turn finishes."""

    def __init__(self, command: str, model_id: str) -> None:
        self.command = command
        self.model_id = model_id

    def register(self, providers: ProviderRegistry) -> None:
        providers.register(self.model_id, lambda: self)

    def stream_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: TokenSink,
        cancel: CancelToken,
    ) -> ModelTurn:
        cancel.raise_if_set()
        own = max(i for i, m in enumerate(messages) if m["role"] == "user")  # after earlier tasks
        if any(m["role"] == "tool" for m in messages[own:]):
            call = ToolCall("call-finish", "finish", '{"summary": "ran it", "success": true}')
        else:
            arguments = json.dumps({"command": self.command})
            call = ToolCall("call-command", "terminal", arguments)
        return ModelTurn(text="", tool_calls=(call,), finish_reason="tool_calls")


class SleepCommand(OneCommand):
    """First turn: `terminal` runs `sleep 30`; any later turn finishes."""

    def __init__(self) -> None:
        super().__init__("sleep 30", "bench-sleep")
