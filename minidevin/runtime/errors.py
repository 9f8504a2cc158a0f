"""Errors with an API face: each knows its HTTP status and error code."""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400
    code = "BAD_REQUEST"


class Unauthorized(ApiError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(ApiError):
    status = 403
    code = "FORBIDDEN"


class NotFound(ApiError):
    status = 404
    code = "NOT_FOUND"


class Conflict(ApiError):
    status = 409
    code = "CONFLICT"


class ValidationFailed(ApiError):
    status = 422
    code = "VALIDATION_ERROR"


class Unavailable(ApiError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
