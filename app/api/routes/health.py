"""Liveness, readiness and the Prometheus exposition: no authentication."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.responses import JSONResponse, PlainTextResponse, Response

from app.api.deps import RuntimeDep
from app.db.migrate import current_revision, head_revision
from app.errors import busy_error
from app.metrics import exposition
from app.schemas.common import RETRY_AFTER_HEADER

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str = Field(description="`ok`, or why the database is not ready.")
    revision: str | None = Field(default=None, description="The schema's migration revision.")


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> Health:
    # NOTE: on the event loop, not a worker thread: liveness must not wait for a free thread
    # or for the GIL hand-offs of one while big ingestion bodies are being parsed.
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the database answers and its schema is at the newest migration",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "Not ready; the body says why",
            "headers": RETRY_AFTER_HEADER,
        }
    },
)
def readyz(runtime: RuntimeDep) -> Response:
    # NOTE: only the exception's class is shown: its message may hold the database URL.
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current = current_revision(runtime.engine)
    except Exception as exc:
        busy = busy_error(exc)  # up, but every pooled connection of this process is in use
        return _unavailable(busy.detail if busy else f"unreachable ({exc.__class__.__name__})")
    head = head_revision()
    if current != head:
        return _unavailable(f"schema at {current}, expected {head}")
    return JSONResponse({"status": "ok", "database": "ok", "revision": current})


def _unavailable(reason: str) -> Response:
    return JSONResponse(
        {"status": "unavailable", "database": reason},
        status_code=503,
        headers={"Retry-After": "5"},
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
)
async def metrics(runtime: RuntimeDep) -> Response:
    try:
        body, content_type = await asyncio.to_thread(exposition, runtime.gauges)
    except Exception:
        # The database gauges are missing while the database is away; the rest still counts.
        body, content_type = await asyncio.to_thread(exposition, None)
    return Response(body, media_type=content_type)
