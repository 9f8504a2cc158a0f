"""Helpers shared by providers that stream over the official SDKs (httpx2 underneath).

Both the `openai` and the `anthropic` SDK hand back a `Stream` whose
`.response` is the `httpx2.Response` being read and whose `close()` releases
it, so a stream is anything shaped like `SdkStream`.

`abort_stream` runs on the cancelling thread and shuts the socket down, which
wakes a worker blocked in a read at once (closing the httpx2 response from
another thread does not: `socket.close()` does not interrupt a `recv()` in
progress). `close_quietly` closes a stream on the worker without masking the
real outcome. `redact` strips API keys and bearer tokens from error text.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, Protocol

import httpx2

from minidevin.runtime.cancel import Cancelled, CancelToken
from minidevin.runtime.providers.base import ProviderError, retry_after_seconds

SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"),  # OpenAI `sk-...`, Anthropic `sk-ant-...`
    re.compile(r"(?i)\bbearer\s+\S+"),
    re.compile(r"(?i)\bx-api-key['\"]?\s*[:=]\s*['\"]?[^\s'\",}]+"),
)


class SdkStream(Protocol):
    """What `openai.Stream` and `anthropic.Stream` have in common here."""

    @property
    def response(self) -> httpx2.Response: ...

    def close(self) -> None: ...

    def __iter__(self) -> Any: ...


def consume_stream(
    open_stream: Callable[[], SdkStream],
    feed: Callable[[Any], None],
    cancel: CancelToken,
    on_error: Callable[[Exception], NoReturn],
) -> None:
    """Open a stream and feed it item by item, honouring `cancel` at once.

    A cancel shuts the socket down (waking a blocked read) and raises
    `Cancelled`; any other failure goes to `on_error`, which raises the
    provider's `ProviderError`. The stream is always closed.
    """
    cancel.raise_if_set()
    stream: SdkStream | None = None
    unregister = None
    try:
        stream = open_stream()
        unregister = cancel.on_cancel(functools.partial(abort_stream, stream))
        items: Iterable[Any] = stream
        for item in items:
            if cancel.is_set():
                raise Cancelled()
            feed(item)
        cancel.raise_if_set()
    except (Cancelled, ProviderError):
        raise
    except Exception as error:
        if cancel.is_set():
            raise Cancelled() from None
        on_error(error)
    finally:
        if unregister is not None:
            unregister()
        if stream is not None:
            close_quietly(stream)


def provider_error(
    code: str, summary: str, error: Exception, *secrets: str | None
) -> ProviderError:
    """The `ProviderError` for an SDK error: redacted detail, the server's Retry-After."""
    detail = str(error)
    if error.__cause__ is not None and "connection" in type(error).__name__.lower():
        detail = f"{detail} ({error.__cause__})"
    detail = redact(detail, *secrets)
    response = getattr(error, "response", None)
    return ProviderError(
        code,
        f"{summary}: {detail}" if detail else summary,
        retry_after=retry_after_seconds(getattr(response, "headers", None)),
    )


def redact(text: str, *secrets: str | None) -> str:
    """`text` without the given secrets nor anything shaped like a key or token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    for pattern in SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text.strip()


def abort_stream(stream: SdkStream) -> None:
    """Runs on the cancelling thread: wake the worker's blocked read at once."""
    response = stream.response
    if response.is_closed:
        # Finished: the connection may already serve another request; leave it be.
        return
    network_stream = response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            # The base-class call also covers SSL sockets without touching SSL state.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
            return
        except OSError:
            pass  # already closed: the worker is not blocked on it
    stream.close()


def close_quietly(stream: SdkStream) -> None:
    """Close on the worker; closing a broken connection must not mask the real outcome."""
    with contextlib.suppress(Exception):
        stream.close()
