"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.api import api_router
from app.api.deps import authorize_header
from app.api.docs import install_docs
from app.api.score_endpoint import ScoreEndpoint
from app.config import Settings, get_settings
from app.console.mount import install_console
from app.errors import PROBLEM_JSON, install_error_handlers
from app.idempotency import IdempotencyMiddleware
from app.middleware import RequestContextMiddleware
from app.runtime import Runtime
from app.schemas.common import AUTH_RESPONSES, BODY_RESPONSES, ProblemDetails
from app.schemas.score_codecs import BINARY_HEADERS
from app.schemas.scores import SCORE_RESPONSES

DESCRIPTION = """
Vigil scores windows of multivariate sensor data with a recurrent semi-supervised VAE and
learns from operators' labels and feedback (`false_positive`, `false_negative`).

Authenticate with `Authorization: Bearer <key>` (the operator console at `/console` sends its
session cookie instead, and its `X-CSRF-Token` header on writes); every error is an RFC 9457
problem document (`application/problem+json`, schema `ProblemDetails`).
"""

PROBLEM_SCHEMA_REF: Final = "#/components/schemas/ProblemDetails"

EXTRA_RESPONSES: Final[dict[tuple[str, str], dict[int | str, dict[str, Any]]]] = {
    ("post", "/v1/score"): SCORE_RESPONSES,
}
"""Responses of routes whose decorators do not list them yet (merged into the OpenAPI)."""


class Vigil(FastAPI):
    """FastAPI, with POST /v1/score dispatched to `ScoreEndpoint` before the framework's stack.

    Everything else, including the lifespan and /v1/score's other methods, goes through FastAPI.
    """

    score_stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.score_stack is not None and ScoreEndpoint.handles(scope):
            scope["app"] = self
            await self.score_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Vigil:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = Vigil(
        title="Vigil",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves them, with their assets (no CDN)
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(api_router)
    install_docs(app)
    install_console(app)
    _install_openapi(app)
    cors: dict[str, Any] = {
        "allow_origins": settings.cors_origins,
        "allow_methods": ["GET", "POST", "PATCH", "DELETE"],
        "allow_headers": ["Authorization", "Content-Type", "Idempotency-Key", *BINARY_HEADERS],
    }
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(
        IdempotencyMiddleware, runtime=lambda: app.state.runtime, authorize=authorize_header
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)

    # The same request context (and CORS) around the scoring endpoint; see score_endpoint.
    score: ASGIApp = ScoreEndpoint(lambda: app.state.runtime, _route(app, "POST", "/v1/score"))
    if settings.cors_origins:
        score = CORSMiddleware(score, **cors)
    app.score_stack = RequestContextMiddleware(score, max_body_bytes=settings.max_body_bytes)
    return app


def _route(app: FastAPI, method: str, path: str) -> BaseRoute:
    """The route FastAPI would pick for `method path` (what it puts in `scope["route"]`)."""
    for context in iter_route_contexts(app.router.routes):
        if context.path == path and method in (context.methods or ()):
            return context.original_route
    raise LookupError(f"no route for {method} {path}")


def _install_openapi(app: FastAPI) -> None:
    """Make the OpenAPI document tell the truth about errors (see `document_problems`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_problems(generate())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_problems(schema: dict[str, Any]) -> None:
    """Every error response is `application/problem+json` with the ProblemDetails schema, and
    optional parameters are not nullable.

    FastAPI documents 422 as `application/json` HTTPValidationError, and knows nothing of the
    errors that middleware and dependencies give. This adds, where missing: 401, 403, 429 and
    503 to every authenticated operation; 413, 415 and 422 to every operation with a body;
    and the responses of EXTRA_RESPONSES. A response that documents its own model (such as
    /readyz's 503) keeps it.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem_schema.pop("$defs", {}))
    components["ProblemDetails"] = problem_schema
    problem_content = {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            added: dict[int | str, dict[str, Any]] = {}
            if operation.get("security"):
                added.update(AUTH_RESPONSES)
            if "requestBody" in operation:
                added.update(BODY_RESPONSES)
            added.update(EXTRA_RESPONSES.get((method, path), {}))
            for code, response in added.items():
                responses.setdefault(str(code), dict(response))
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400 and _is_generic(response):
                    response["content"] = problem_content
            operation["responses"] = dict(sorted(responses.items()))
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _without_null(parameter.get("schema", {}))
    used = str(schema.get("paths"))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}" not in used:
            components.pop(name, None)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is absent rather than null: HTTP has no way to send a null."""
    branches = schema.get("anyOf")
    if not isinstance(branches, list) or {"type": "null"} not in branches:
        return schema
    rest = [branch for branch in branches if branch != {"type": "null"}]
    out = {key: value for key, value in schema.items() if key != "anyOf"}
    if len(rest) == 1:
        return {**rest[0], **out}
    return {**out, "anyOf": rest}


def _is_generic(response: dict[str, Any]) -> bool:
    """True when a response documents no model of its own, or FastAPI's validation error."""
    content = response.get("content")
    if not content:
        return True
    return "HTTPValidationError" in str(content)
