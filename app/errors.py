"""The error types of the domain: each carries the HTTP status, title and detail a client
acts on. They import no web framework; ``app.web.problems`` renders them as
application/problem+json (RFC 9457)."""

from __future__ import annotations

from typing import Any


class ProblemError(Exception):
    """An error a client can act on: an HTTP status, a short title and a specific detail."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class NotFound(ProblemError):
    status, title = 404, "Not found"


class Conflict(ProblemError):
    status, title = 409, "Conflict"


class Invalid(ProblemError):
    status, title = 422, "Invalid request"


class TooLarge(ProblemError):
    status, title = 413, "Payload too large"


class Unauthorized(ProblemError):
    status, title = 401, "Unauthorized"


class Forbidden(ProblemError):
    status, title = 403, "Forbidden"


class TooManyRequests(ProblemError):
    status, title = 429, "Too many requests"


class Unavailable(ProblemError):
    status, title = 503, "Service unavailable"
