"""Access control in one middleware: who is asking, whether they may, how often.

`/api/*` (but the public paths) and `/ws/*` need credentials: `Authorization:
Bearer <JWT>`, `X-API-Key: md_...`, or, on the WebSocket, `?token=<JWT>`.
Credentials are checked once per request, then the rate limit of that user (or
of the client address, without valid credentials) is counted, and only then is
a missing or bad credential refused, so failed attempts count too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from minidevin.http.keys import PRINCIPAL, RUNTIME
from minidevin.http.ratelimit import RATE_HEADERS, FixedWindowLimiter, RateLimited, client_address
from minidevin.runtime.auth import Principal
from minidevin.runtime.errors import Forbidden, Unauthorized

PUBLIC_PATHS = frozenset({"/health", "/api/auth/register", "/api/auth/login", "/api/openapi.json"})
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
        principal: Principal | None = None
        refusal = Unauthorized(MISSING)
        if _has_credentials(request):
            try:
                principal = await authenticate(request)
            except Unauthorized as exc:
                refusal = exc
        _count(request, limiter, principal)
        if principal is not None:
            request[PRINCIPAL] = principal
        elif path not in PUBLIC_PATHS:
            raise refusal
        return await handler(request)

    return access


def _count(request: web.Request, limiter: FixedWindowLimiter, principal: Principal | None) -> None:
    """Count the request against its limit; `RateLimited` over it."""
    settings = request.app[RUNTIME].settings
    if principal is not None:
        key, limit = f"user:{principal.user_id}", settings.rate_limit_authenticated
    else:
        address = client_address(request, settings.trust_forwarded_for)
        key, limit = f"addr:{address}", settings.rate_limit_anonymous
    if limit == 0:
        return
    allowed, headers = limiter.hit(key, limit)
    request[RATE_HEADERS] = headers
    if not allowed:
        raise RateLimited(f"rate limit of {limit} requests a minute exceeded; retry later")


def _check_origin(request: web.Request) -> None:
    """A browser's WebSocket must come from an allowed origin (tools send none)."""
    origin = request.headers.get("Origin")
    allowed = request.app[RUNTIME].settings.cors_origins
    if origin is not None and "*" not in allowed and origin not in allowed:
        raise Forbidden("origin not allowed")


def _has_credentials(request: web.Request) -> bool:
    return bool(
        request.headers.get("Authorization")
        or request.headers.get("X-API-Key")
        or (request.path.startswith("/ws/") and request.query.get("token"))
    )


async def authenticate(request: web.Request) -> Principal:
    accounts = request.app[RUNTIME].accounts
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return await accounts.authenticate_token(credentials.strip())
    api_key = request.headers.get("X-API-Key")
    if api_key:
        return await accounts.authenticate_api_key(api_key.strip())
    if request.path.startswith("/ws/") and request.query.get("token"):
        return await accounts.authenticate_token(request.query["token"])
    raise Unauthorized(MISSING)
