"""Access control in one middleware: who is asking, whether they may, how often.

`/api/*` (but the public paths) and `/ws/*` need credentials: `Authorization:
Bearer <JWT>`, `X-API-Key: md_...`, or, on the WebSocket, `?token=<JWT>`.
Credentials are checked once per request, then the rate limit of that user (or
of the client address, without valid credentials) is counted, and only then is
a missing or bad credential refused, so failed attempts count too.

Login and register count against their own limit (`MINIDEVIN_RATE_LIMIT_LOGIN`
a minute) per client address and per account (the body's normalized email),
whatever credentials are attached: a valid key buys no extra password guesses.
A password change counts against it too (per address and per user).
Credentials that are not ASCII (a header of raw non-UTF-8 bytes) are a 401.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from minidevin.http.console import public_origin
from minidevin.http.keys import PRINCIPAL, RUNTIME
from minidevin.http.ratelimit import RATE_HEADERS, FixedWindowLimiter, RateLimited, client_address
from minidevin.runtime import metrics
from minidevin.runtime.auth import Principal
from minidevin.runtime.errors import Forbidden, Unauthorized
from minidevin.runtime.schemas import normalize_email

PUBLIC_PATHS = frozenset(
    {"/health", "/api/auth/register", "/api/auth/login", "/api/openapi.json", "/api/docs"}
)
LOGIN_PATHS = frozenset({"/api/auth/register", "/api/auth/login"})
PASSWORD_PATH = "/api/auth/password"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MISSING = "missing credentials: send 'Authorization: Bearer <token>' or 'X-API-Key'"


def access_middleware(limiter: FixedWindowLimiter) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        unrouted = request.match_info.http_exception is not None  # answer 404/405 as such
        if unrouted or request.method == "OPTIONS" or not path.startswith(("/api/", "/ws/")):
            return await handler(request)
        if path.startswith("/ws/"):
            _check_origin(request)  # CORS does not cover WebSockets
        if path in LOGIN_PATHS:  # credentials change nothing here
            email = await _body_email(request)
            await _count_login(request, limiter, email, anonymous=True)
            return await handler(request)
        principal: Principal | None = None
        refusal = Unauthorized(MISSING)
        if _has_credentials(request):
            try:
                principal = await authenticate(request)
            except Unauthorized as exc:
                refusal = exc
        await _count(request, limiter, principal)
        if principal is not None:
            request[PRINCIPAL] = principal
        elif path not in PUBLIC_PATHS:
            raise refusal
        if path == PASSWORD_PATH and request.method == "POST":
            assert principal is not None
            await _count_login(request, limiter, f"user:{principal.user_id}", anonymous=False)
        return await handler(request)

    return access


async def _count(
    request: web.Request, limiter: FixedWindowLimiter, principal: Principal | None
) -> None:
    """Count the request against its limit; `RateLimited` over it."""
    settings = request.app[RUNTIME].settings
    if principal is not None:
        key, limit = f"user:{principal.user_id}", settings.rate_limit_authenticated
    else:
        key, limit = f"addr:{_address(request)}", settings.rate_limit_anonymous
    await _hit(
        request, limiter, [(key, limit)], f"rate limit of {limit} requests a minute exceeded"
    )


async def _count_login(
    request: web.Request, limiter: FixedWindowLimiter, account: str, *, anonymous: bool
) -> None:
    """Count a password attempt per client address and per account (and, for login and
    register, as an anonymous request of the address); `RateLimited` over any."""
    settings = request.app[RUNTIME].settings
    limit, address = settings.rate_limit_login, _address(request)
    counters = [(f"login-addr:{address}", limit)]
    if account:
        counters.append((f"login-account:{account}", limit))
    if anonymous:
        counters.append((f"addr:{address}", settings.rate_limit_anonymous))
    await _hit(
        request,
        limiter,
        counters,
        f"too many login attempts (at most {limit} a minute per address and per account)",
    )


async def _hit(
    request: web.Request,
    limiter: FixedWindowLimiter,
    counters: list[tuple[str, int]],
    message: str,
) -> None:
    """Count on every counter (limit 0: off); the tightest one's headers go out."""
    counted = [(key, await limiter.hit(key, limit)) for key, limit in counters if limit > 0]
    answers = [answer for _, answer in counted]
    if not answers:
        return
    refused = [headers for allowed, headers in answers if not allowed]
    for key in (key for key, (allowed, _) in counted if not allowed):
        metrics.count_rate_limited(key)
    tightest = min((headers for _, headers in answers), key=_remaining)
    request[RATE_HEADERS] = {**request.get(RATE_HEADERS, {}), **(refused or [tightest])[0]}
    if refused:
        raise RateLimited(f"{message}; retry later")


def _address(request: web.Request) -> str:
    return client_address(request, request.app[RUNTIME].settings.trust_forwarded_for)


def _remaining(headers: dict[str, str]) -> int:
    return int(headers["X-RateLimit-Remaining"])


async def _body_email(request: web.Request) -> str:
    """The normalized email a login or register body names ('' when it names none)."""
    raw = await request.read()  # (kept: the handler reads it again)
    try:
        email = json.loads(raw).get("email")
    except (ValueError, RecursionError, AttributeError):
        return ""
    return normalize_email(email)[:320] if isinstance(email, str) else ""


def _ascii(value: str) -> str:
    """Credentials are ASCII; anything else (raw non-UTF-8 bytes included) is a 401."""
    if not value.isascii():
        raise Unauthorized("invalid credentials: not ASCII")
    return value


def _check_origin(request: web.Request) -> None:
    """A browser's WebSocket must come from an allowed origin, or the console's own
    (tools send none)."""
    origin = request.headers.get("Origin")
    allowed = request.app[RUNTIME].settings.cors_origins
    if origin is None or "*" in allowed or origin in allowed:
        return
    if origin != public_origin(request):
        raise Forbidden("origin not allowed")


def _has_credentials(request: web.Request) -> bool:
    return bool(
        request.headers.get("Authorization")
        or request.headers.get("X-API-Key")
        or (request.path.startswith("/ws/") and request.query.get("token"))
    )


async def authenticate(request: web.Request) -> Principal:
    accounts = request.app[RUNTIME].accounts
    authorization = _ascii(request.headers.get("Authorization", ""))
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return await accounts.authenticate_token(credentials.strip())
    api_key = _ascii(request.headers.get("X-API-Key", ""))
    if api_key:
        return await accounts.authenticate_api_key(api_key.strip())
    if request.path.startswith("/ws/") and request.query.get("token"):
        return await accounts.authenticate_token(_ascii(request.query["token"]))
    raise Unauthorized(MISSING)
