"""Retries of a model turn: exponential backoff with full jitter, bounded twice.

Rate limits, server errors, timeouts, dropped connections and stalled streams
are retried; authentication, bad requests and a turn over its output cap fail
at once. A server's `Retry-After` wins over the computed delay, up to
`max_retry_after`: a longer one fails the turn with the server's error rather
than sleeping. Attempts and total time are both capped. A stream that broke
midway is retried from the start of the turn; `on_retry` tells the caller
first, so it can tell its clients that the partial turn is superseded. Each
attempt runs under the policy's `TurnLimits` (stall time, output cap).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.providers.base import Model, ModelTurn, ProviderError, TokenSink
from minidevin.runtime.providers.streaming import TurnLimits, turn_limits


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0  # cap of a computed backoff delay
    max_total: float = 120.0
    max_retry_after: float = 120.0  # longest server Retry-After waited out
    stall_seconds: float | None = None  # a stream silent this long is retried
    max_output_bytes: int | None = None  # text and tool-call arguments of one turn
    token_coalesce_ms: float = 0.0  # text deltas within this are one `token` event

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempts count from 1)."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    @property
    def limits(self) -> TurnLimits:
        return TurnLimits(self.stall_seconds, self.max_output_bytes)


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
            with turn_limits(policy.limits):
                return model.stream_turn(messages, tools, on_token, cancel)
        except ProviderError as error:
            if not error.retryable or attempt >= policy.max_attempts:
                raise
            if error.retry_after is not None and error.retry_after > policy.max_retry_after:
                raise ProviderError(
                    error.code,
                    f"{error.message} (the provider asked to retry after "
                    f"{error.retry_after:g} s; at most {policy.max_retry_after:g} s is waited)",
                    retry_after=error.retry_after,
                ) from error
            delay = policy.delay(attempt, error.retry_after)
            if time.monotonic() - started + delay > policy.max_total:
                raise
            attempt += 1
            on_retry(attempt, delay, error)
            if cancel.wait(delay):
                raise Cancelled() from None
