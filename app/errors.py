"""One domain error hierarchy, rendered by one handler as RFC 9457 problem details."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import compile_path

from app.schemas.common import SLUG_PATTERN
from models import ModelError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
FASTAPI_BODY_ERROR = "There was an error parsing the body"


class VigilError(Exception):
    """An error a client can act on. `detail` is shown to the client verbatim."""

    status_code = 400
    title = "Bad request"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class InvalidInput(VigilError):
    status_code = 422
    title = "Invalid input"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        errors = [{"loc": field.split("."), "msg": detail}] if field else None
        super().__init__(f"{field}: {detail}" if field else detail, errors=errors)
        self.field = field


class NotEnoughPoints(VigilError):
    """Too few stored points to train on; the detail says how many there are and are needed."""

    status_code = 422
    title = "Not enough data"


class NotFound(VigilError):
    status_code = 404
    title = "Not found"


class SeriesNotFound(NotFound):
    def __init__(self, series_id: int | str) -> None:
        super().__init__(f"series {series_id} does not exist")


class Conflict(VigilError):
    status_code = 409
    title = "Conflict"


class NoTrainedModel(Conflict):
    title = "No trained model"

    def __init__(self, series_name: str) -> None:
        super().__init__(
            f"series {series_name!r} has no trained model yet: ingest points and "
            f"POST /v1/series/{{id}}/train, then poll the job until it has succeeded"
        )


class PayloadTooLarge(VigilError):
    status_code = 413
    title = "Payload too large"


class UnsupportedMediaType(VigilError):
    status_code = 415
    title = "Unsupported media type"


class Unauthorized(VigilError):
    status_code = 401
    title = "Unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


class Forbidden(VigilError):
    status_code = 403
    title = "Forbidden"


class RateLimited(VigilError):
    status_code = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class ServiceUnavailable(VigilError):
    status_code = 503
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class ServiceBusy(ServiceUnavailable):
    """The database is up but this request could not get its turn in time: a row lock held
    too long by other writers, its statement timeout, or no free pooled connection. The
    request's transaction was rolled back, so retrying it is safe."""

    title = "Service busy"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(f"busy, retry: {detail}", retry_after=retry_after)


BUSY_SQLSTATES: Final = {
    "55P03": "a row this request writes stayed locked by other writers longer than the lock "
    "timeout",
    "57014": "the request's database statement ran longer than the statement timeout",
    "40P01": "the request's transaction deadlocked with another one",
    "40001": "the request's transaction conflicted with another one",
}
"""Postgres errors (lock_not_available, query_canceled, deadlock_detected,
serialization_failure) that end a transaction on a healthy database: the request is refused
as busy, not as an outage."""


def busy_error(exc: BaseException) -> ServiceBusy | None:
    """The 503 "busy, retry" for a driver or SQLAlchemy error caused by contention, else None.

    A pool timeout (every pooled connection in use), a Postgres lock or statement timeout, a
    deadlock, or SQLite's "database is locked" all mean a healthy database that was too busy
    for this request in time; anything else (connection refused, server gone) is an outage.
    """
    if isinstance(exc, PoolTimeout):
        return ServiceBusy("every database connection of this process is in use")
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in BUSY_SQLSTATES:
        return ServiceBusy(BUSY_SQLSTATES[sqlstate])
    if isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig):
        return ServiceBusy("the database stayed locked by other writers longer than the timeout")
    return None


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


UNION_TAGS = frozenset({"range", "score"})
"""Tags of the discriminated unions of request bodies (LabelCreate in app/schemas/labels.py).
pydantic puts the tag into an error's `loc`, where it names nothing the client sent."""

MESSAGES_BY_TYPE = {
    "missing": "is required",
    "extra_forbidden": "is not a field this request accepts; remove it",
    "model_attributes_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
}
"""pydantic's messages that name its internals, in words that say what to send instead."""

PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
WHERE = {"query": "query parameter", "path": "path parameter", "header": "header"}


def _describe_validation_errors(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in UNION_TAGS]
        msg = _message(err)
        for prefix in PYDANTIC_PREFIXES:
            msg = msg.removeprefix(prefix)
        if err.get("type") == "json_invalid":
            # FastAPI puts the character offset into `loc`; it belongs in the message.
            reason = (err.get("ctx") or {}).get("error", "malformed")
            msg = f"is not valid JSON: {reason} at character {loc[1] if len(loc) > 1 else 0}"
            loc = loc[:1]
        errors.append({"loc": loc, "msg": msg, "type": err.get("type")})
    summary = "; ".join(_sentence(e["loc"], e["msg"]) for e in errors[:5])
    if len(errors) > 5:
        summary += f"; and {len(errors) - 5} more"
    return summary or "invalid request", errors


def _message(err: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == SLUG_PATTERN:
        return "must be 1 to 100 letters, digits, '-', '_' or '.'"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        most = "least" if kind == "too_short" else "most"
        items = "item" if bound == 1 else "items"
        return f"must hold at {most} {bound} {items}, not {ctx.get('actual_length')}"
    return MESSAGES_BY_TYPE.get(kind, str(err.get("msg", "invalid")))


def _sentence(loc: list[str], msg: str) -> str:
    """`windows[3]: ...`, `query parameter limit: ...`, or the body's own message."""
    if not loc:
        return msg
    source, path = loc[0], loc[1:]
    name = "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in path).lstrip(".")
    if source == "body":
        if name:
            return f"{name}: {msg}"
        return f"the body {msg}" if msg.startswith(("is ", "must ")) else msg
    return f"{WHERE.get(source, source)} {name}: {msg}" if name else f"{source}: {msg}"


def error_response(exc: Exception, *, method: str, path: str) -> Response:
    """The problem document for an exception raised while serving `method path`.

    The one mapping from exceptions to responses, for FastAPI's handlers and for the routes
    served outside FastAPI (see `app.api.score_endpoint`): domain errors as they say, the model
    package's input errors as 422, a busy database (`busy_error`) as 503 "busy, retry" and a
    lost one as 503 "unavailable", both with Retry-After, anything else as a logged 500 that
    tells the client nothing of the internals.
    """
    if isinstance(exc, VigilError):
        return problem(
            exc.status_code,
            exc.title,
            exc.detail,
            instance=path,
            errors=exc.errors,
            headers=exc.headers,
        )
    if isinstance(exc, ModelError):
        # The model package's messages are written to be passed on unchanged.
        return problem(422, "Invalid input", str(exc), instance=path)
    if (busy := busy_error(exc)) is not None:
        log.warning("database busy during %s: %s", path, busy.detail)
        return error_response(busy, method=method, path=path)
    if _database_unavailable(exc):
        log.warning("database unavailable during %s: %s", path, exc.__class__.__name__)
        return problem(
            503,
            "Service unavailable",
            "the database is unavailable; retry shortly",
            instance=path,
            headers={"Retry-After": "5"},
        )
    log.error("unhandled error during %s %s", method, path, exc_info=exc)
    return problem(
        500,
        "Internal server error",
        "an unexpected error occurred; it has been logged",
        instance=path,
    )


def _database_unavailable(exc: Exception) -> bool:
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def install_error_handlers(app: FastAPI) -> None:
    async def by_error_response(request: Request, exc: Exception) -> Response:
        return error_response(exc, method=request.method, path=request.url.path)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if isinstance(exc.body, bytes | bytearray) and _about_the_body(exc):
            # FastAPI reads a body as JSON only when its content type says so; otherwise the
            # route gets raw bytes, which no JSON schema accepts.
            return problem(
                415,
                "Unsupported media type",
                f"{_content_type_shown(request)} is not supported: send a JSON body with "
                "Content-Type: application/json",
                instance=request.url.path,
            )
        detail, errors = _describe_validation_errors(exc)
        return problem(422, "Invalid input", detail, instance=request.url.path, errors=errors)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.detail == FASTAPI_BODY_ERROR and exc.__cause__ is not None:
            # FastAPI turns whatever goes wrong while it reads a JSON body into this bare 400.
            unreadable = _unreadable_body(exc.__cause__)
            if unreadable is None:
                raise exc.__cause__  # not about the content: e.g. the body limit (413)
            return problem(
                422,
                "Invalid input",
                f"body: {unreadable}",
                instance=request.url.path,
                errors=[{"loc": ["body"], "msg": unreadable, "type": "json_invalid"}],
            )
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            # Starlette lists the methods of the first route with this path only.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return problem(
            exc.status_code,
            _title_for(exc.status_code),
            str(exc.detail),
            instance=request.url.path,
            headers=headers,
        )

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Database errors and the catch-all: contention (the pool's timeout, a lock or statement
    # timeout) is "busy, retry"; OperationalError (connection refused, server gone) and any
    # DBAPIError that invalidated its connection are outages.
    for error in (VigilError, ModelError, OperationalError, PoolTimeout, DBAPIError, Exception):
        app.add_exception_handler(error, by_error_response)


def _allowed_methods(request: Request) -> list[str]:
    """Every method that some route serves at the request's path, however it is included."""
    methods: set[str] = set()
    path = request.url.path
    for context in iter_route_contexts(request.app.router.routes):
        if context.path and context.methods and compile_path(context.path)[0].match(path):
            methods.update(context.methods)
    return sorted(methods)


def _about_the_body(exc: RequestValidationError) -> bool:
    return any(tuple(err.get("loc", ()))[:1] == ("body",) for err in exc.errors())


def _content_type_shown(request: Request) -> str:
    content_type = request.headers.get("content-type")
    if not content_type:
        return "a body without a content type"
    shown = content_type if len(content_type) <= 60 else content_type[:57] + "..."
    return f"content type {shown!r}"


def _unreadable_body(cause: BaseException) -> str | None:
    """Why a JSON body could not be read, or None when the failure is not the content's."""
    if isinstance(cause, RecursionError):
        return "is not valid JSON: nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"is not valid JSON: not UTF-8 text (byte {cause.start})"
    if isinstance(cause, ValueError):
        if "digits" in str(cause):
            return "is not valid JSON here: it holds an integer literal of more than 4,300 digits"
        return f"is not valid JSON: {cause}"
    if isinstance(cause, ClientDisconnect):
        return "the client disconnected before sending the whole body"
    return None


def _title_for(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
