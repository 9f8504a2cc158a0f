"""Retries of a model turn: exponential backoff with full jitter, bounded twice.

Rate limits, server errors, timeouts and dropped connections are retried;
authentication and bad requests fail at once. A server's `Retry-After` wins
over the computed delay. Attempts and total time are both capped. A stream
that broke midway is retried from the start of the turn; `on_retry` tells the
caller first, so it can tell its clients that the partial turn is superseded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.providers.base import Model, ModelTurn, ProviderError, TokenSink


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_total: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempts count from 1)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


RetryNotice = Callable[[int, float, ProviderError], None]


def stream_with_retries(
    model: Model,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    on_token: TokenSink,
    cancel: CancelToken,
    policy: RetryPolicy,
    on_retry: RetryNotice,
) -> ModelTurn:
    """One turn, retried per `policy`; `on_retry(next_attempt, delay, error)` before each retry."""
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return model.stream_turn(messages, tools, on_token, cancel)
        except ProviderError as error:
            if not error.retryable or attempt >= policy.max_attempts:
                raise
            delay = policy.delay(attempt, error.retry_after)
            if time.monotonic() - started + delay > policy.max_total:
                raise
            attempt += 1
            on_retry(attempt, delay, error)
            if cancel.wait(delay):
                raise Cancelled() from None
