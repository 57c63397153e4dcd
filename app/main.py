"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.responses import Response

from app import __version__
from app.api import api_router
from app.config import Settings, get_settings
from app.errors import install_error_handlers, problem
from app.idempotency import IdempotencyMiddleware
from app.middleware import RequestContextMiddleware
from app.runtime import Runtime

log = logging.getLogger(__name__)

DESCRIPTION = """
Vigil scores windows of multivariate sensor data with a recurrent semi-supervised VAE and
learns from operators' labels and feedback (`false_positive`, `false_negative`).

Authenticate with `Authorization: Bearer <key>`; every error is an RFC 9457 problem document.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
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

    app = FastAPI(
        title="Vigil",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    _install_infrastructure_handlers(app)
    app.include_router(api_router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(IdempotencyMiddleware, sessions=lambda: app.state.runtime.sessions)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


def _install_infrastructure_handlers(app: FastAPI) -> None:
    async def database_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable during %s: %s", request.url.path, exc.__class__.__name__)
        return problem(
            503,
            "Service unavailable",
            "the database is unavailable; retry shortly",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )

    async def database_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        if exc.connection_invalidated:
            return await database_unavailable(request, exc)
        return await unexpected(request, exc)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error during %s %s", request.method, request.url.path)
        return problem(
            500,
            "Internal server error",
            "an unexpected error occurred; it has been logged",
            instance=request.url.path,
        )

    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(PoolTimeout, database_unavailable)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(Exception, unexpected)
