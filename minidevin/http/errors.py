"""The API's error format, `{detail, code, timestamp}`, for every failure."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from minidevin.runtime.events import utc_now

HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def error_body(detail: str, code: str) -> dict[str, Any]:
    return {"detail": detail, "code": code, "timestamp": utc_now()}


def error_response(
    status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        error_body(detail, code or HTTP_CODES.get(status, "ERROR")), status=status, headers=headers
    )


def validation_detail(error: ValidationError) -> str:
    """`field: problem; other.field: problem`, naming each offending field."""
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)
