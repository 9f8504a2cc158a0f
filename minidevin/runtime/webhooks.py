"""Webhooks: a session's task status changes POSTed to its `webhook_url`.

The store enqueues a delivery in the transaction that commits each `status` event
(`storage/sqlite_webhooks.py`), so the outbox is as durable as the log. The
`WebhookDeliverer` here sends it: at least once (a retry carries the same body,
so the same `delivery_id`), one task's deliveries in order, retried with
exponential backoff on a non-2xx answer or a connection error, given up after
`webhook_max_attempts`. Woken when a status event commits; otherwise it sleeps
until the next delivery is due, so after a restart what was pending goes out.

Every attempt resolves the URL's host and refuses private, loopback, link-local,
multicast, unspecified and reserved addresses (unless `webhook_allow_private`),
then connects only to the addresses it checked: a name that resolves elsewhere
between the check and the connection (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult

from minidevin.runtime.errors import ValidationFailed
from minidevin.runtime.events import Event, utc_now
from minidevin.runtime.settings import Settings

log = structlog.get_logger("minidevin.webhooks")

SIGNATURE_HEADER = "X-Minidevin-Signature"
RESOLVE_TIMEOUT = 10.0  # seconds a host name may take to resolve
BATCH = 32  # deliveries in flight at once (one a task: a task's line goes in order)
PRUNE_INTERVAL = 3600.0  # seconds between prunings of settled deliveries
KEEP_SETTLED = 24 * 3600.0  # a delivered or given-up delivery is kept this long


class WebhookRefused(Exception):
    """The URL may not be called: bad syntax or scheme, or a refused address."""


def check_url_syntax(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL; `WebhookRefused` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhook_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("webhook_url must be an http or https URL")
    if not parts.hostname:
        raise WebhookRefused("webhook_url has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("webhook_url may not carry credentials")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refused_address(address: str) -> str | None:
    """Why `address` may not be called (private, loopback, ...), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address inside (mapped, 6to4, Teredo)
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            if (why := refused_address(str(inner))) is not None:
                return why
            ip = inner
    for kind in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:  # (shared address space, documentation ranges, ...)
        return f"{ip} is not a public address"
    return None


async def resolve_checked(host: str, port: int, allow_private: bool) -> list[ResolveResult]:
    """`host`'s addresses, every one of them allowed; `WebhookRefused` otherwise."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise WebhookRefused(f"webhook host {host!r} did not resolve in time") from None
    except OSError as exc:
        raise WebhookRefused(f"webhook host {host!r} does not resolve: {exc}") from None
    results: list[ResolveResult] = []
    for family, _, proto, _, sockaddr in infos:
        address = str(sockaddr[0])
        reason = None if allow_private else refused_address(address)
        if reason is not None:
            raise WebhookRefused(f"webhook host {host!r} refused: {reason}")
        results.append(
            ResolveResult(hostname=host, host=address, port=port, family=family, proto=proto,
                          flags=socket.AI_NUMERICHOST)
        )  # fmt: skip
    if not results:
        raise WebhookRefused(f"webhook host {host!r} has no address")
    return results


async def check_webhook_url(url: str, allow_private: bool) -> None:
    """At session creation: an http(s) URL whose host resolves to allowed addresses
    (any address with `allow_private`); 422 otherwise."""
    try:
        host, port = check_url_syntax(url)
        if not allow_private:
            await resolve_checked(host, port, allow_private)
    except WebhookRefused as exc:
        raise ValidationFailed(str(exc)) from None


def signature(secret: str, body: bytes) -> str:
    """The `X-Minidevin-Signature` value of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _PinnedResolver(AbstractResolver):
    """Answers with the addresses already checked, and nothing else."""

    def __init__(self, addresses: list[ResolveResult]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return self.addresses

    async def close(self) -> None:
        return None


LEADER_RECHECK = 1.0  # seconds between a waiting node's looks at who delivers


async def _always() -> bool:
    return True


class WebhookDeliverer:
    """Sends the outbox's due deliveries until stopped (see the module's text)."""

    def __init__(self, store: Any, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # opens a session's stored (sealed) webhook secret; set once the secrets key is loaded
        self.open_secret: Callable[[str], str] = lambda sealed: sealed
        # with nodes: whether this node is the one delivering now (`leases.Leases.leads`)
        self.delivers_here: Callable[[], Awaitable[bool]] = _always

    def watching(self, publish: Callable[[list[Event]], None]) -> Callable[[list[Event]], None]:
        """`publish`, then a wake-up when the committed events hold a status change."""

        def committed(events: list[Event]) -> None:
            publish(events)
            if any(event.type == "status" for event in events):
                self._wake.set()

        return committed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        """Stop sending; a delivery cut short is sent again by the next server."""
        if self._task is not None:
            self._task.cancel()  # (attempts in flight are cancelled with the loop's end)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        """Start each due delivery as its own attempt (at most `BATCH` in flight): a slow
        receiver holds only its own task's line, never the others'. Woken by a status
        commit or an attempt's end; otherwise asleep until the next delivery is due."""
        max_attempts = self.settings.webhook_max_attempts
        in_flight: dict[str, asyncio.Task[None]] = {}
        # when each recent attempt ended: a read begun before that may show its row as due
        # still (the attempt's write committed after the read began), so it is not taken
        ended: dict[str, float] = {}
        pruned = 0.0
        while True:
            self._wake.clear()
            try:
                if time.monotonic() - pruned > PRUNE_INTERVAL:
                    pruned = time.monotonic()
                    await self.store.forget_webhooks(time.time() - KEEP_SETTLED, max_attempts)
                if not await self.delivers_here():  # (with nodes: one node delivers)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), LEADER_RECHECK)
                    continue
                now, asked = time.time(), time.monotonic()
                if (room := BATCH - len(in_flight)) > 0:
                    due = await self.store.due_webhooks(now, max_attempts, BATCH + len(in_flight))
                    fresh = [
                        row for row in due
                        if row["id"] not in in_flight and ended.get(row["id"], -1.0) < asked
                    ]  # fmt: skip
                    for row in fresh[:room]:
                        in_flight[row["id"]] = self._start_attempt(row, in_flight, ended)
                for key in [key for key, at in ended.items() if at < asked - 60]:
                    del ended[key]  # (long past every read)
                next_due = await self.store.next_webhook_due(max_attempts, after=now)
                timeout = None if next_due is None else max(0.0, next_due - time.time())
                if self.delivers_here is not _always:  # (the one delivering keeps saying so)
                    timeout = LEADER_RECHECK if timeout is None else min(timeout, LEADER_RECHECK)
            except Exception:  # (the store down: try again a little later)
                log.exception("webhook_outbox_failed")
                timeout = self.settings.webhook_retry_base_delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _start_attempt(
        self,
        row: dict[str, Any],
        in_flight: dict[str, asyncio.Task[None]],
        ended: dict[str, float],
    ) -> asyncio.Task[None]:
        attempt = asyncio.create_task(self._attempt(row))

        def done(_: asyncio.Task[None]) -> None:
            ended[row["id"]] = time.monotonic()
            in_flight.pop(row["id"], None)
            self._wake.set()  # (its task's next delivery may be due now)

        attempt.add_done_callback(done)
        return attempt

    async def _attempt(self, row: dict[str, Any]) -> None:
        attempts = row["attempts"] + 1
        sealed = row["secret"]
        secret = None if sealed is None else self.open_secret(sealed)
        error = await self._post(row["url"], row["body"].encode(), secret)
        fields = {"delivery_id": row["id"], "task_id": row["task_id"], "seq": row["seq"]}
        if error is None:
            await self.store.webhook_delivered(row["id"], utc_now(), attempts)
            log.info("webhook_delivered", attempts=attempts, **fields)
            return
        delay = min(
            self.settings.webhook_retry_base_delay * 2 ** (attempts - 1),
            self.settings.webhook_retry_max_delay,
        )
        delay *= 1 + random.uniform(0, 0.1)  # a little jitter: retries do not march together
        await self.store.webhook_failed(row["id"], attempts, time.time() + delay, error)
        if attempts >= self.settings.webhook_max_attempts:
            log.warning("webhook_given_up", attempts=attempts, error=error, **fields)
        else:
            log.info("webhook_retry", attempts=attempts, error=error, delay=delay, **fields)

    async def _post(self, url: str, body: bytes, secret: str | None) -> str | None:
        """One attempt: None when the receiver answered 2xx, else why not."""
        allow_private = self.settings.webhook_allow_private
        try:
            host, port = check_url_syntax(url)
            addresses = await resolve_checked(host, port, allow_private)
        except WebhookRefused as exc:
            return str(exc)
        headers = {"Content-Type": "application/json", "User-Agent": "minidevin-webhooks"}
        if secret:
            headers[SIGNATURE_HEADER] = signature(secret, body)
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(addresses), use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.post(url, data=body, headers=headers, allow_redirects=False) as answer,
            ):
                if 200 <= answer.status < 300:
                    return None
                return f"HTTP {answer.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
