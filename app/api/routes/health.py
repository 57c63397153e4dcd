"""Liveness, readiness and the Prometheus exposition: no authentication."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from app.api.deps import RuntimeDep
from app.db.migrate import current_revision, head_revision
from app.metrics import exposition

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the database answers and its schema is at the newest migration",
    responses={503: {"description": "Not ready; the body says why"}},
)
def readyz(runtime: RuntimeDep) -> Response:
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current = current_revision(runtime.engine)
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "database": f"unreachable ({exc.__class__.__name__})"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    head = head_revision()
    if current != head:
        return JSONResponse(
            {"status": "unavailable", "database": f"schema at {current}, expected {head}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ok", "database": "ok", "revision": current})


@router.get("/metrics", summary="Prometheus metrics (text exposition format)")
async def metrics(runtime: RuntimeDep) -> Response:
    try:
        body, content_type = await asyncio.to_thread(exposition, runtime.sessions)
    except Exception:
        # The database gauges are missing while the database is away; the rest still counts.
        body, content_type = await asyncio.to_thread(exposition, None)
    return Response(body, media_type=content_type)
