"""Safe retries: `POST`s that create something accept an `Idempotency-Key` header.

The same key from the same user within `TTL_SECONDS` answers the first request's
response again (same status and body, plus `Idempotent-Replayed: true`) and
creates nothing. The same key with another body or on another route is a 422
`IDEMPOTENCY_KEY_REUSED`. A request whose key is already being answered waits
for that answer (up to `WAIT_SECONDS`, then 409 `CONFLICT`); keys are per user.
Only successes (2xx) are remembered: after an error the key may be used again.

The store never sees a client's key or a response in clear: rows are found by an
HMAC of the key, and the remembered body (an API key's secret, a task's text) is
sealed with keys derived from it (SHAKE-256 keystream, HMAC-SHA256 tag).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from minidevin.http.keys import PRINCIPAL, RUNTIME
from minidevin.runtime.errors import ApiError, Conflict, ValidationFailed
from minidevin.runtime.storage import StoreError

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
TTL_SECONDS = 24 * 3600
WAIT_SECONDS = 30.0
MAX_KEY_LENGTH = 255
# (method, route) of the requests that create something; register is not here (no
# user to scope a key to: a retried register answers 409, the email being taken)
IDEMPOTENT_ROUTES = frozenset(
    {
        ("POST", "/api/sessions"),
        ("POST", "/api/sessions/{session_id}/tasks"),
        ("POST", "/api/auth/api-keys"),
        ("POST", "/api/tasks/{task_id}/resume"),
        ("POST", "/api/tasks/{task_id}/input"),
    }
)


@dataclass(frozen=True)
class KeySecrets:
    """What one user's `Idempotency-Key` derives: the row's key and the sealing keys."""

    key_id: str
    _fingerprint: bytes = field(repr=False)
    _cipher: bytes = field(repr=False)
    _mac: bytes = field(repr=False)

    @classmethod
    def derive(cls, user_id: str, key: str) -> KeySecrets:
        root = hashlib.sha256(b"minidevin idempotency\0%s\0%s" % (user_id.encode(), key.encode()))
        material = root.digest()

        def part(label: bytes) -> bytes:
            return hmac.new(material, label, hashlib.sha256).digest()

        return cls(part(b"id").hex(), part(b"fingerprint"), part(b"cipher"), part(b"mac"))

    def fingerprint(self, method: str, path: str, body: bytes) -> str:
        """The request as compared with a replay's: route, path and body (JSON read
        as JSON: key order and spacing do not count)."""
        try:
            canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
            text = canonical.encode()
        except (ValueError, RecursionError):
            text = body
        message = b"%s %s\0%s" % (method.encode(), path.encode(), text)
        return hmac.new(self._fingerprint, message, hashlib.sha256).hexdigest()

    def seal(self, plain: bytes) -> bytes:
        nonce = os.urandom(16)
        sealed = nonce + _xor(plain, self._stream(nonce, len(plain)))
        return hmac.new(self._mac, sealed, hashlib.sha256).digest() + sealed

    def open(self, stored: bytes) -> bytes | None:
        """The sealed body; None if it is not what `seal` wrote with these keys."""
        tag, sealed = stored[:32], stored[32:]
        expected = hmac.new(self._mac, sealed, hashlib.sha256).digest()
        if len(sealed) < 16 or not hmac.compare_digest(tag, expected):
            return None
        nonce, cipher = sealed[:16], sealed[16:]
        return _xor(cipher, self._stream(nonce, len(cipher)))

    def _stream(self, nonce: bytes, size: int) -> bytes:
        return hashlib.shake_256(self._cipher + nonce).digest(size)


def _xor(data: bytes, stream: bytes) -> bytes:
    if not data:
        return b""
    mixed = int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")
    return mixed.to_bytes(len(data), "big")


def check_key(key: str) -> None:
    """1 to 255 visible ASCII characters; 422 otherwise."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" for c in key):
        raise ValidationFailed(
            f"{HEADER}: must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (a UUID will do)"
        )


def _route(request: web.Request) -> tuple[str, str] | None:
    resource = request.match_info.route.resource
    return None if resource is None else (request.method, resource.canonical)


def idempotency_middleware() -> Callable[..., Awaitable[web.StreamResponse]]:
    """Inside access control (it needs the user); one per application."""
    inflight: dict[tuple[str, str], asyncio.Event] = {}

    @web.middleware
    async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        if key is None or PRINCIPAL not in request or _route(request) not in IDEMPOTENT_ROUTES:
            return await handler(request)
        check_key(key)
        user_id = request[PRINCIPAL].user_id
        secrets = KeySecrets.derive(user_id, key)
        fingerprint = secrets.fingerprint(request.method, request.path, await request.read())
        store, slot = request.app[RUNTIME].store, (user_id, secrets.key_id)
        while True:
            running = inflight.get(slot)
            if running is not None:  # the first request with this key: wait for its answer
                try:
                    async with asyncio.timeout(WAIT_SECONDS):
                        await running.wait()
                except TimeoutError:
                    raise Conflict(
                        f"a request with this {HEADER} is still in progress; retry later"
                    ) from None
                continue
            remembered = await store.remembered_response(
                user_id, secrets.key_id, time.time() - TTL_SECONDS
            )
            if slot not in inflight:
                break
        if remembered is not None:
            return _replay(remembered, fingerprint, secrets)
        done = inflight[slot] = asyncio.Event()
        try:
            response = await handler(request)
            await _remember(request, response, secrets, fingerprint)
            return response
        finally:
            del inflight[slot]
            done.set()

    return idempotency


def _replay(remembered: dict[str, Any], fingerprint: str, secrets: KeySecrets) -> web.Response:
    if not hmac.compare_digest(remembered["fingerprint"], fingerprint):
        raise ApiError(
            f"this {HEADER} was used for another request (another body or route) "
            "within the last 24 hours; use a new key",
            code="IDEMPOTENCY_KEY_REUSED",
            status=422,
        )
    body = secrets.open(bytes(remembered["body"]))
    if body is None:
        log.error("idempotency_body_unreadable")
        raise ApiError("the remembered response cannot be read", code="INTERNAL_ERROR")
    return web.Response(
        body=body,
        status=remembered["status"],
        content_type="application/json",
        headers={REPLAYED: "true"},
    )


async def _remember(
    request: web.Request, response: web.StreamResponse, secrets: KeySecrets, fingerprint: str
) -> None:
    """Remember a success (a JSON body); errors are not remembered."""
    if not 200 <= response.status < 300 or not isinstance(response, web.Response):
        return
    body = response.body
    if not isinstance(body, bytes) or response.content_type != "application/json":
        return
    user_id, now = request[PRINCIPAL].user_id, time.time()
    try:
        await request.app[RUNTIME].store.remember_response(
            user_id, secrets.key_id, fingerprint, response.status, secrets.seal(body),
            now, now - TTL_SECONDS,
        )  # fmt: skip
    except StoreError as exc:  # done is done: answer it; a retry may repeat it
        log.warning("idempotency_key_not_remembered", path=request.path, error=str(exc))
