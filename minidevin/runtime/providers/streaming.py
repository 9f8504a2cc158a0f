"""Helpers shared by providers that stream over the official SDKs (httpx2 underneath).

Both the `openai` and the `anthropic` SDK hand back a `Stream` whose
`.response` is the `httpx2.Response` being read and whose `close()` releases
it, so a stream is anything shaped like `SdkStream`.

`abort_stream` runs on the cancelling thread and shuts the socket down, which
wakes a worker blocked in a read at once (closing the httpx2 response from
another thread does not: `socket.close()` does not interrupt a `recv()` in
progress). `close_quietly` closes a stream on the worker without masking the
real outcome. `redact` strips API keys and bearer tokens from error text.

Bounds of one attempt at a turn (`TurnLimits`, set by `turn_limits` around the
model call, so every provider built on `consume_stream` obeys them without a
parameter of its own): a stream silent for `stall_seconds` once open is
abandoned (`StreamStalled`, retryable), and the text and tool-call arguments a
builder admits (`admit_output`) stop at `max_output_bytes` (`TurnOutputTooLarge`).
`split_delta` cuts a long text delta into pieces a WebSocket message can carry.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
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
    provider's `ProviderError`. The stream is always closed. Under `turn_limits`
    with `stall_seconds`, a read waiting that long shuts the socket down too and
    raises `StreamStalled` (the wait for the response headers is not watched:
    the client's timeout bounds it).
    """
    cancel.raise_if_set()
    stream: SdkStream | None = None
    unregister = None
    watch: _StallWatch | None = None
    stall = _limits().stall_seconds
    try:
        stream = open_stream()
        unregister = cancel.on_cancel(functools.partial(abort_stream, stream))
        if stall is not None:
            watch = _StallWatch(stream, stall)
        items: Iterator[Any] = iter(stream)
        while True:
            if watch is not None:
                watch.waiting()
            item = next(items, _END)
            if watch is not None:
                watch.busy()  # (a pause in `feed`, say backpressure, is not the provider's)
            if cancel.is_set():
                raise Cancelled()
            if watch is not None and watch.fired:
                raise StreamStalled(stall)  # the aborted stream may just look ended
            if item is _END:
                break
            feed(item)
        cancel.raise_if_set()
    except (Cancelled, ProviderError):
        raise
    except Exception as error:
        if cancel.is_set():
            raise Cancelled() from None
        if watch is not None and watch.fired:
            raise StreamStalled(watch.seconds) from None
        on_error(error)
    finally:
        if watch is not None:
            watch.stop()
        if unregister is not None:
            unregister()
        if stream is not None:
            close_quietly(stream)


_END = object()


class _StallWatch:
    """A daemon thread that aborts the stream once a read has waited `seconds`."""

    def __init__(self, stream: SdkStream, seconds: float) -> None:
        self.stream = stream
        self.seconds = seconds
        self.fired = False
        self._since: float | None = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._run, name="stream-stall-watch", daemon=True).start()

    def waiting(self) -> None:
        self._since = time.monotonic()

    def busy(self) -> None:
        self._since = None

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while True:
            since = self._since
            wait = self.seconds if since is None else since + self.seconds - time.monotonic()
            if wait <= 0:
                self.fired = True
                abort_stream(self.stream)
                return
            if self._done.wait(wait):
                return


# --- the bounds of one attempt at a turn ------------------------------------------------------

TOKEN_PIECE_BYTES = 256 * 1024  # UTF-8 bytes of one `token` event's text, at most
TOKEN_PIECE_CHARS = 128 * 1024  # and characters: escaped as JSON, a piece stays under 1 MiB


@dataclass(frozen=True)
class TurnLimits:
    stall_seconds: float | None = None
    max_output_bytes: int | None = None


class StreamStalled(ProviderError):
    """The provider sent nothing for `seconds` mid-stream: retried like a dropped stream."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            "PROVIDER_STALLED", f"the provider's stream sent nothing for {seconds:g} s"
        )

    @property
    def retryable(self) -> bool:
        return True


class TurnOutputTooLarge(ProviderError):
    """The turn's text and tool-call arguments passed the cap; never retried."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "TURN_OUTPUT_TOO_LARGE",
            f"the model's turn passed {limit} bytes of text and tool-call arguments "
            "(MINIDEVIN_MAX_TURN_OUTPUT_BYTES); its stream was cut",
        )


class _Attempt:
    def __init__(self, limits: TurnLimits) -> None:
        self.limits = limits
        self.output_bytes = 0


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("minidevin_turn_attempt", default=None)


@contextlib.contextmanager
def turn_limits(limits: TurnLimits) -> Iterator[None]:
    """Bound the model call made inside (on this thread): one attempt at a turn."""
    token = _ATTEMPT.set(_Attempt(limits))
    try:
        yield
    finally:
        _ATTEMPT.reset(token)


def _limits() -> TurnLimits:
    attempt = _ATTEMPT.get()
    return attempt.limits if attempt is not None else TurnLimits()


def admit_output(text: str) -> str:
    """Count `text` against the turn's output cap: all of it, or the prefix that fits.

    A builder keeps (and streams) what is returned and raises `TurnOutputTooLarge`
    when it is shorter than `text`.
    """
    attempt = _ATTEMPT.get()
    limit = attempt.limits.max_output_bytes if attempt is not None else None
    if attempt is None or limit is None:
        return text
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    room = limit - attempt.output_bytes
    if size <= room:
        attempt.output_bytes += size
        return text
    attempt.output_bytes = limit + 1  # over: nothing more fits
    return _utf8_prefix(text, max(0, room))


def check_admitted(text: str, kept: str) -> None:
    """Raise `TurnOutputTooLarge` when `admit_output` kept only part of `text`."""
    if len(kept) < len(text):
        attempt = _ATTEMPT.get()
        limit = attempt.limits.max_output_bytes if attempt is not None else None
        raise TurnOutputTooLarge(limit or 0)


def split_delta(
    text: str, max_bytes: int = TOKEN_PIECE_BYTES, max_chars: int = TOKEN_PIECE_CHARS
) -> list[str]:
    """`text` in pieces of at most `max_bytes` UTF-8 bytes and `max_chars` characters.

    Cuts fall between characters, never inside one nor between the halves of a
    surrogate pair; the pieces joined are `text`.
    """
    if len(text) <= min(max_chars, max_bytes // 4):
        return [text]
    pieces: list[str] = []
    start = 0
    while start < len(text):
        piece = _utf8_prefix(text[start : start + max_chars], max_bytes)
        if len(piece) > 1 and "\ud800" <= piece[-1] <= "\udbff":
            piece = piece[:-1]  # keep a high surrogate with its low half
        piece = piece or text[start]  # (a limit below one character: one at a time)
        pieces.append(piece)
        start += len(piece)
    return pieces


def _utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 form fits `max_bytes`."""
    if len(text) * 4 <= max_bytes:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    cut = max_bytes
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # back to the start of a character
        cut -= 1
    return data[:cut].decode("utf-8", "surrogatepass")


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
