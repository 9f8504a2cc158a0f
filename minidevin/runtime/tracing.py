"""OpenTelemetry traces of tasks; off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

One trace per task run: the HTTP request that created (or resumed) the task is
its root; under it
a `task` span lasts the run, with a `model_turn` span per model turn (model,
provider, tokens) and a `tool_call` span per tool call the tool runner executes
(tool, success, the terminal's exit code). A request's `traceparent` is the
client's word: the request span only links to it, unless the setting
`MINIDEVIN_TRACE_JOIN_CALLERS` says the callers are trusted, and then it joins
that trace (and its sampling decision).

The SDK and the OTLP exporter are the optional extra `minidevin[otel]`, imported
only when tracing is turned on; off, every function here returns at once. The
standard `OTEL_*` variables configure the exporter (`OTEL_EXPORTER_OTLP_HEADERS`,
...) and the service name (`OTEL_SERVICE_NAME`, default `minidevin`).

Actors run on their own threads, so contexts are passed explicitly, through
two tables keyed by task id: the creating request's context (taken where the
request hands the task to its session) and the live task spans.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog

from minidevin.runtime.events import timestamp_ns

log = structlog.get_logger(__name__)
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
EXIT_CODE = re.compile(r"\[exit code: (-?\d+)\]\s*$")
TRACED_PATHS = ("/api/",)
MAX_WAITING = 10_000  # requests' contexts kept for tasks that have not started yet


class _Tracing:
    """Tracing turned on: the SDK's tracer, and the contexts tasks are parented to."""

    def __init__(self, processor: Any) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "minidevin"}
        self.provider = TracerProvider(resource=Resource.create(named))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("minidevin")
        self.lock = threading.Lock()
        self.requests: dict[str, Any] = {}  # task id -> context of the request that made it
        self.tasks: dict[str, Any] = {}  # task id -> its live `task` span


_active: _Tracing | None = None


def enabled() -> bool:
    return _active is not None


def enable(processor: Any) -> None:
    """Turn tracing on, spans going to `processor` (an SDK `SpanProcessor`)."""
    global _active
    disable()
    _active = _Tracing(processor)


def enable_from_environment(environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on (batched OTLP over HTTP) if `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
    True if it is on. Without the `otel` extra installed: a warning, and off."""
    if _active is not None:
        return True
    if not environ.get(ENDPOINT_VARIABLE):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("tracing_unavailable", error=str(exc), fix="pip install 'minidevin[otel]'")
        return False
    enable(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing_enabled", endpoint=environ[ENDPOINT_VARIABLE])
    return True


def disable() -> None:
    """Turn tracing off; spans not yet exported are flushed first."""
    global _active
    active, _active = _active, None
    if active is not None:
        active.provider.shutdown()


# -- the HTTP side -----------------------------------------------------------------------


def remember_request(task_id: str) -> None:
    """The current context (a request's span) becomes the parent of `task_id`'s next run."""
    active = _active
    if active is None:
        return
    from opentelemetry import context, trace

    if trace.get_current_span().get_span_context().is_valid:
        with active.lock:
            active.requests[task_id] = context.get_current()
            if len(active.requests) > MAX_WAITING:  # (tasks stopped before they ran)
                del active.requests[next(iter(active.requests))]


@contextmanager
def request_span(
    method: str, route: str, headers: Mapping[str, str], *, join_caller: bool = False
) -> Iterator[Any]:
    """A server span for one HTTP request, current while the handler runs (None when off):
    in the caller's trace if `join_caller`, else the root of a new one linked to it."""
    active = _active
    if active is None:
        yield None
        return
    from opentelemetry import context, propagate, trace

    caller = propagate.extract(headers)
    caller_span = trace.get_current_span(caller).get_span_context()
    parent = caller if join_caller else context.Context()
    links = [] if join_caller or not caller_span.is_valid else [trace.Link(caller_span)]
    span = active.tracer.start_span(
        f"{method} {route}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route},
        links=links,
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    finally:
        context.detach(token)
        span.end()


def record_response(span: Any, status: int) -> None:
    """A request span's response status (a 5xx: an error)."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR))


# -- the task side (actor threads) -------------------------------------------------------


def start_task(task_id: str, model: str, session_id: str) -> None:
    """The `task` span of a run starting now, under the request that created it if any."""
    active = _active
    if active is None:
        return
    with active.lock:
        parent = active.requests.pop(task_id, None)
    attributes = {
        "minidevin.task.id": task_id,
        "minidevin.session.id": session_id,
        "gen_ai.request.model": model,
    }
    span = active.tracer.start_span("task", context=parent, attributes=attributes)
    with active.lock:
        active.tasks[task_id] = span


def interrupted_run(
    task_id: str, session_id: str, started_at: str | None, last_seen: str | None, why: str
) -> None:
    """The `task` span of a run whose process died (its own span was never ended, so never
    exported): found at the next start (or by the node taking its session over), it is
    recorded then, from when the task first started to its last committed event, failed
    `INTERRUPTED`, as a trace of its own."""
    active = _active
    if active is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    end = _nanoseconds(last_seen) or time.time_ns()
    start = min(_nanoseconds(started_at) or end, end)
    attributes = {
        "minidevin.task.id": task_id,
        "minidevin.session.id": session_id,
        "minidevin.task.status": "failed",
        "error.type": "INTERRUPTED",
    }
    span = active.tracer.start_span(
        "task", context=context.Context(), attributes=attributes, start_time=start
    )
    span.set_status(Status(StatusCode.ERROR, why))
    span.end(end_time=end)


def _nanoseconds(timestamp: str | None) -> int | None:
    """An API timestamp (ISO 8601, `Z`) in nanoseconds since the epoch; None if none."""
    if not timestamp:
        return None
    try:
        return timestamp_ns(timestamp)
    except ValueError:
        return None


def end_task(task_id: str, status: str | None) -> None:
    """End the run's `task` span with its final status (nothing if it had none)."""
    active = _active
    if active is None:
        return
    with active.lock:
        span = active.tasks.pop(task_id, None)
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("minidevin.task.status", status or "unknown")
    if status == "failed":
        span.set_status(Status(StatusCode.ERROR, "the task failed"))
    span.end()


@contextmanager
def child_span(task_id: str, name: str, **attributes: Any) -> Iterator[Any]:
    """A span under `task_id`'s `task` span, for the block (None when off or no such task)."""
    active = _active
    if active is None:
        yield None
        return
    from opentelemetry import trace

    with active.lock:
        parent = active.tasks.get(task_id)
    if parent is None:
        yield None
        return
    span = active.tracer.start_span(
        name, context=trace.set_span_in_context(parent), attributes=_attributes(attributes)
    )
    try:
        yield span
    finally:
        span.end()


def record_turn(span: Any, outcome: Any) -> None:
    """A `model_turn` span's result: its tokens, or its error code."""
    if span is None:
        return
    turn = getattr(outcome, "turn", None)
    if turn is not None:
        span.set_attribute("gen_ai.usage.input_tokens", turn.usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", turn.usage.completion_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [turn.finish_reason or ""])
        return
    from opentelemetry.trace import Status, StatusCode

    code = str(getattr(outcome, "code", "ERROR"))
    span.set_attribute("error.type", code)
    span.set_status(Status(StatusCode.ERROR, code))


def record_tool(span: Any, tool: str, result: Any) -> None:
    """A `tool_call` span's result: success, and a terminal command's exit code."""
    if span is None:
        return
    span.set_attribute("minidevin.tool.success", bool(result.success))
    if tool == "terminal":
        match = EXIT_CODE.search(result.output)
        if match is not None or result.success:
            span.set_attribute("process.exit.code", int(match.group(1)) if match else 0)
    if not result.success:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, "the tool call failed"))


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes OpenTelemetry takes (no None)."""
    return {key: value for key, value in values.items() if value is not None}
