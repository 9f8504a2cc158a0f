"""Cross-cutting concerns: errors and CORS (access control is in `access`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import ValidationError

from minidevin.http.errors import HTTP_CODES, error_response, validation_detail
from minidevin.runtime.errors import ApiError
from minidevin.runtime.storage import StoreError

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-API-Key, Idempotency-Key"
EXPOSED_HEADERS = (
    "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, "
    "Idempotent-Replayed, X-Next-Cursor, Link"
)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as `{detail, code, timestamp}`; never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.detail, exc.code)
    except ValidationError as exc:
        return error_response(422, validation_detail(exc), "VALIDATION_ERROR")
    except StoreError as exc:
        log.error("store_unavailable", method=request.method, path=request.path, error=str(exc))
        return error_response(503, f"storage is unavailable: {exc}", "STORE_UNAVAILABLE")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.reason if exc.status != 404 else "resource not found"
        if exc.status == 413:
            detail = "request body is too large"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, detail, HTTP_CODES.get(exc.status), headers)
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal server error", "INTERNAL_ERROR")


def cors_middleware(
    allowed_origins: tuple[str, ...],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    allowed = frozenset(allowed_origins)
    allow_any = "*" in allowed

    def origin_allowed(origin: str | None) -> bool:
        return origin is not None and (allow_any or origin in allowed)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if preflight:
            response: web.StreamResponse = web.Response(status=204)
            if origin_allowed(origin):
                response.headers.update(
                    {
                        "Access-Control-Allow-Methods": CORS_METHODS,
                        "Access-Control-Allow-Headers": CORS_HEADERS,
                        "Access-Control-Max-Age": "600",
                    }
                )
        else:
            response = await handler(request)
        if origin_allowed(origin) and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if not response.prepared:
            response.headers["Vary"] = "Origin"
        return response

    return cors
