"""Prometheus metrics: what a server did (counters, histograms) and what it holds now.

Counters and histograms are process-wide, in `REGISTRY` (one process may hold
several runtimes; their sums are the process's). What a runtime holds now
(tasks by status, WebSocket subscribers, actors and threads) is read at scrape
time by a `RuntimeCollector`, in a registry of the app's own
(`runtime_registry`). `GET /metrics` (`http/metrics_routes.py`) exposes both.

Every name starts with `minidevin_`; the process's own (`process_*`,
`python_*`) come along in `REGISTRY`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from minidevin.runtime.events import FINAL_STATUSES, Event
from minidevin.runtime.mcp.config import TOOL_PREFIX

REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)  # (the same objects the default registry holds)

# the `running` status a task's session emits when it starts it (a run, or a resumed run)
TASK_STARTED_MESSAGE = "Task started"
# seconds: a model turn lasts from a second to minutes; a command from ms to half an hour
TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)

TASKS_STARTED = Counter(
    "minidevin_tasks_started", "Task runs started (a resumed task starts again).", registry=REGISTRY
)
TASKS_ENDED = Counter(
    "minidevin_tasks_ended",
    "Task runs ended, by final status (completed, failed, stopped).",
    ["outcome"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "minidevin_events",
    "Task events committed and published, by type; rate() is events per second.",
    ["type"],
    registry=REGISTRY,
)
MODEL_TURN_SECONDS = Histogram(
    "minidevin_model_turn_seconds",
    "Duration of a model turn (its retries included), by provider and outcome.",
    ["provider", "outcome"],
    buckets=TURN_BUCKETS,
    registry=REGISTRY,
)
FIRST_TOKEN_SECONDS = Histogram(
    "minidevin_model_first_token_seconds",
    "Time from a model turn's start to its first text, by provider.",
    ["provider"],
    buckets=FIRST_TOKEN_BUCKETS,
    registry=REGISTRY,
)
MODEL_TOKENS = Counter(
    "minidevin_model_tokens",
    "Tokens of model turns, by provider and kind (prompt, completion).",
    ["provider", "kind"],
    registry=REGISTRY,
)
MODEL_COST = Counter(
    "minidevin_model_cost_usd",
    "Cost of model turns in USD at the configured prices, by provider.",
    ["provider"],
    registry=REGISTRY,
)
TOOL_CALL_SECONDS = Histogram(
    "minidevin_tool_call_seconds",
    "Duration of a tool call the tool runner executes, by tool and outcome.",
    ["tool", "outcome"],
    buckets=TOOL_BUCKETS,
    registry=REGISTRY,
)
SANDBOX_FAILURES = Counter(
    "minidevin_sandbox_failures",
    "Commands whose sandbox could not be set up, by stage (start, network, no_network: "
    "ran without a network it asked for).",
    ["stage"],
    registry=REGISTRY,
)
STORE_BATCH_SIZE = Histogram(
    "minidevin_store_batch_size",
    "Items (writes and events) of a committed store batch.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
STORE_COMMIT_SECONDS = Histogram(
    "minidevin_store_commit_seconds",
    "Time to commit a store batch (one transaction), outage retries included.",
    buckets=COMMIT_BUCKETS,
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "minidevin_rate_limited",
    "Requests refused by a rate limit (429), by limit (user, addr, login-addr, login-account).",
    ["limit"],
    registry=REGISTRY,
)


def count_published(events: Iterable[Event]) -> None:
    """Committed events on their way to subscribers: events by type, task starts and ends."""
    types: Tally[str] = Tally()
    for event in events:
        types[event.type] += 1
        if event.type != "status":
            continue
        status = event.data.get("status")
        if status in FINAL_STATUSES:
            TASKS_ENDED.labels(status).inc()
        elif status == "running" and event.data.get("message") == TASK_STARTED_MESSAGE:
            TASKS_STARTED.inc()
    for type_, count in types.items():
        EVENTS.labels(type_).inc(count)


def provider_of(providers: Any, model_id: str) -> str:
    """The provider name of `model_id` (`openai`, `anthropic`, ...), or `unknown`."""
    try:
        return str(providers.resolve(model_id).provider)
    except Exception:
        return "unknown"


def add_usage(meter: Any, usage: Any, providers: Any, model_id: str) -> None:
    """Add a turn's `usage` to the task's `UsageMeter`, and count its tokens and cost."""
    provider = provider_of(providers, model_id)
    cost_before = meter.cost_usd
    meter.add(usage)
    MODEL_TOKENS.labels(provider, "prompt").inc(max(0, usage.prompt_tokens))
    MODEL_TOKENS.labels(provider, "completion").inc(max(0, usage.completion_tokens))
    if meter.cost_usd > cost_before:
        MODEL_COST.labels(provider).inc(meter.cost_usd - cost_before)


class TurnTimer:
    """Times one model turn: `first_text()` on its first text, `done(outcome)` at its end."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.started = time.monotonic()
        self._first_seen = False

    def first_text(self) -> None:
        if not self._first_seen:
            self._first_seen = True
            FIRST_TOKEN_SECONDS.labels(self.provider).observe(time.monotonic() - self.started)

    def done(self, outcome: Any) -> None:
        """The turn ended with `outcome` (`ModelTurnDone` or `ModelTurnFailed`)."""
        code = getattr(outcome, "code", None)
        label = "success" if code is None else "cancelled" if code == "CANCELLED" else "failure"
        MODEL_TURN_SECONDS.labels(self.provider, label).observe(time.monotonic() - self.started)


def observe_tool_call(tool: str, success: bool, seconds: float) -> None:
    """A tool call's duration; MCP tools count as `mcp` (their names are a tenant's: one
    series per name would grow without bound)."""
    label = "mcp" if tool.startswith(TOOL_PREFIX) else tool
    TOOL_CALL_SECONDS.labels(label, "success" if success else "failure").observe(seconds)


def observe_commit(size: int, seconds: float) -> None:
    STORE_BATCH_SIZE.observe(size)
    STORE_COMMIT_SECONDS.observe(seconds)


def count_sandbox_failure(stage: str) -> None:
    SANDBOX_FAILURES.labels(stage).inc()


def count_rate_limited(key: str) -> None:
    """A refusal of the limiter counter `key` (`user:...`, `addr:...`): its kind, not its id."""
    RATE_LIMITED.labels(key.partition(":")[0]).inc()


class RuntimeCollector(Collector):
    """Gauges of one runtime, read when scraped. The tasks by status are a scan: the route
    reads them through the store's reader thread first (`refresh`), never on the loop."""

    def __init__(self, runtime: Any, count_actors: Callable[[], int]) -> None:
        self.runtime = runtime
        self.count_actors = count_actors  # (the actor layer's: this layer knows no pykka)
        self.task_counts: dict[str, int] | None = None

    async def refresh(self) -> None:
        """Read the tasks by status (None when the store cannot say: the gauge is left out)."""
        counts = getattr(self.runtime.store, "task_status_counts", None)
        try:
            self.task_counts = None if counts is None else dict(await counts())
        except Exception:  # a scrape never fails for the store
            self.task_counts = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tasks = GaugeMetricFamily(
            "minidevin_tasks", "Tasks in the store, by status.", labels=["status"]
        )
        counts = self.task_counts
        if counts is not None:
            for status, count in sorted(counts.items()):
                tasks.add_metric([status], count)
            yield tasks
        yield GaugeMetricFamily(
            "minidevin_websocket_subscribers",
            "Live event subscriptions (WebSockets following a task).",
            value=self.runtime.hub.subscriber_count(),
        )
        yield GaugeMetricFamily(
            "minidevin_actors", "Live actors (sessions, tasks, their children).",
            value=self.count_actors(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "minidevin_threads", "Threads of the process.", value=threading.active_count()
        )


def runtime_registry(
    runtime: Any, count_actors: Callable[[], int]
) -> tuple[CollectorRegistry, RuntimeCollector]:
    """A registry of `runtime`'s own gauges, for its app's `/metrics`, and its collector."""
    registry = CollectorRegistry(auto_describe=False)
    collector = RuntimeCollector(runtime, count_actors)
    registry.register(collector)
    return registry, collector
