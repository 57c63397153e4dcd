"""What a call can raise: `ApiError` (the service answered with a problem document) and
`TransportError` (it could not be reached), both `VigilError`s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
    "UnsupportedMediaType",
    "VigilError",
    "field_of",
]

_SOURCES = frozenset({"body", "query", "path", "header"})


class VigilError(Exception):
    """Anything this client raises about a call to Vigil."""


class TransportError(VigilError):
    """No answer: connection refused, reset or timed out, after the retries allowed."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class ApiError(VigilError):
    """The service answered with an error: its status and RFC 9457 problem document.

    `field` names the first input the service found wrong (`window_size`, `windows[3]`,
    `limit`, ...), or is None when the error is not about one field.
    """

    status: int = 0

    def __init__(
        self,
        *,
        status: int,
        method: str,
        url: str,
        problem: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        attempts: int = 1,
    ) -> None:
        self.status = status
        self.method = method
        self.url = url
        self.problem: dict[str, Any] = dict(problem)
        self.headers: dict[str, str] = dict(headers or {})
        self.attempts = attempts
        self.title: str = str(problem.get("title") or "")
        self.detail: str = str(problem.get("detail") or problem.get("title") or "")
        raw_errors = problem.get("errors")
        self.errors: list[dict[str, Any]] = (
            [dict(e) for e in raw_errors if isinstance(e, Mapping)]
            if isinstance(raw_errors, list)
            else []
        )
        self.fields: list[str] = [f for f in (field_of(e.get("loc")) for e in self.errors) if f]
        self.field: str | None = self.fields[0] if self.fields else None
        self.request_id: str | None = self.headers.get("x-request-id")
        super().__init__(f"{method} {url} -> {status}: {self.detail or self.title}")

    @property
    def retry_after(self) -> str | None:
        """The `Retry-After` header as sent, if any."""
        return self.headers.get("retry-after")


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class InvalidInput(ApiError):
    """422: the input is wrong; `field` says where, `detail` what to send instead."""

    status = 422


class RateLimited(ApiError):
    status = 429


class ServiceUnavailable(ApiError):
    status = 503


class ServerError(ApiError):
    """Any other 5xx."""


class JobFailed(VigilError):
    """`wait_for_job` saw the job fail; `job` is the job as the service last showed it."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"training job {job.id} failed: {job.error}")
        self.job = job


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidInput,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class(status: int) -> type[ApiError]:
    return _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)


def field_of(loc: object) -> str | None:
    """`["body", "windows", 3]` -> `windows[3]`; `["query", "limit"]` -> `limit`."""
    if isinstance(loc, str):
        return loc or None
    if not isinstance(loc, Sequence) or not loc:
        return None
    parts = [str(part) for part in loc]
    if parts[0] in _SOURCES and len(parts) > 1:
        parts = parts[1:]
    name = "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in parts).lstrip(".")
    return name or None
