"""structlog configuration: one event per line, JSON when not on a terminal.

Secrets never reach a log line: the `redact_secrets` processor blanks any key
that names a secret, so a careless `log.info(..., token=...)` still stays safe.

`minidevin serve` and `minidevin run` call `configure_logging` (to stderr).
An embedding program gets `use_host_logging` from `Runtime`: unless it has
configured structlog itself, minidevin's events go through the standard
`logging` module (loggers named `minidevin.*`), so they land wherever the
program's logging sends them, and with none set up, warnings and errors go
to stderr (Python's last-resort handler). Never to stdout: structlog's own
default would print there, into the embedding program's output.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from minidevin.runtime.redaction import logged_values

SECRET_KEYS = ("password", "token", "secret", "api_key", "apikey", "authorization", "key_hash")


def redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Fields named like secrets are dropped; users' secret values (`runtime/redaction.py`)
    are masked wherever they appear in a string."""
    values = logged_values()
    for key in list(event):
        if any(part in key.lower() for part in SECRET_KEYS):
            event[key] = "[redacted]"
        elif values:
            event[key] = _masked(event[key], values)
    return event


def _masked(item: Any, values: dict[str, str]) -> Any:
    if isinstance(item, str):
        for value, marker in values.items():
            if value in item:
                item = item.replace(value, marker)
        return item
    if isinstance(item, dict):
        return {key: _masked(inner, values) for key, inner in item.items()}
    if isinstance(item, list | tuple):
        return [_masked(inner, values) for inner in item]
    return item


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Route structlog and the standard library (pykka, aiohttp) to one stream."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,  # (again: a traceback's text may hold a value)
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def use_host_logging() -> None:
    """Unless the program has configured structlog, route minidevin's events to `logging`."""
    if structlog.is_configured():
        return  # the program's own structlog setup wins
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            redact_secrets,  # (after the traceback is text: it may hold a value)
            structlog.dev.ConsoleRenderer(
                colors=False, pad_event_to=0, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
