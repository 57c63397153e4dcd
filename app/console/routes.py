"""The operator console's pages, served at /console by the API process itself.

Pages are rendered on the server (Jinja2); htmx refreshes their live parts, and a little
JavaScript of our own draws charts (uPlot) and sends operators' writes to the /v1 API with the
session cookie and the CSRF header (app/console/session.py). Reads the pages need beyond the
API (the fleet table, decimated charts, the feedback comparison) are here, through the same
scopes: a key restricted to some series sees only those.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from app.api.deps import RuntimeDep
from app.console import data
from app.console.feedback import feedback_view
from app.console.session import (
    COOKIE,
    CSRF_FIELD,
    ConsoleSession,
    check_csrf,
    csrf_token,
    make_cookie,
    read_session,
)
from app.errors import Forbidden, InvalidInput, Unauthorized
from app.runtime import Runtime
from app.schemas.common import MAX_DB_ID, SeriesIdPath, TimestampUs
from app.security import has_scope

HERE: Final = Path(__file__).parent
STATIC_DIR: Final = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

MAX_WIDTH: Final = 4000
"""Widest chart served, in pixel columns (so at most 8000 points per channel)."""

SECURITY_HEADERS: Final = {
    # Nothing from another origin, no inline script: the console runs only its own files.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/console", include_in_schema=False)


class SignInNeeded(Exception):
    """A page asked for without a live session: the handler sends the browser to sign in."""


async def _session(request: Request, runtime: RuntimeDep) -> ConsoleSession:
    session = await read_session(runtime, request)
    if session is None or not has_scope(session.principal.scopes, "read"):
        raise SignInNeeded
    return session


SessionCookie = Annotated[ConsoleSession, Depends(_session)]


async def _api_session(request: Request, runtime: RuntimeDep) -> ConsoleSession:
    session = await read_session(runtime, request)
    if session is None:
        raise Unauthorized("the console session has ended: sign in again")
    if not has_scope(session.principal.scopes, "read"):
        raise Forbidden("this API key lacks the 'read' scope")
    return session


ApiSession = Annotated[ConsoleSession, Depends(_api_session)]


def _render(
    request: Request, name: str, session: ConsoleSession | None, **context: Any
) -> HTMLResponse:
    scopes = session.principal.scopes if session else ()
    response = templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "key_name": session.principal.name if session else None,
            "csrf": session.csrf if session else "",
            "can_label": has_scope(scopes, "label"),
            "can_train": has_scope(scopes, "train"),
            "now": datetime.now(UTC),
            "ago": ago,
            **context,
        },
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """`3 min ago`, `5 h ago`, `2 d ago`, or `never`."""
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (login CSRF)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host")


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form's fields (first value of each), without python-multipart."""
    body = await request.body()
    if len(body) > 4096:
        raise InvalidInput("the form is too large", field="body")
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    return {name: values[0] for name, values in fields.items()}


# -- sign-in ----------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, error: str | None = None) -> HTMLResponse:
    return _render(request, "login.html", None, error=error)


@router.post("/login", response_model=None)
async def login(request: Request, runtime: RuntimeDep) -> Response:
    api_key = (await _form(request)).get("api_key", "")
    if not _same_origin(request):
        return _render(request, "login.html", None, error="sign in from the console's own page")
    key = await runtime.keys.authenticate(api_key.strip()) if api_key.strip() else None
    if key is None or not has_scope(key.scopes, "read"):
        error = "unknown, revoked or expired key" if key is None else "this key lacks `read`"
        refused = _render(request, "login.html", None, error=error)
        refused.status_code = 401
        return refused
    cookie = make_cookie(runtime.settings, key)
    response = RedirectResponse("/console/fleet", status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(runtime.settings.console_session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", response_model=None)
async def logout(request: Request, runtime: RuntimeDep) -> Response:
    session = await read_session(runtime, request)
    if session is not None:
        check_csrf(session, (await _form(request)).get(CSRF_FIELD))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("", response_model=None)
@router.get("/", response_model=None)
async def home() -> Response:
    return RedirectResponse("/console/fleet", status_code=303)


# -- fleet ------------------------------------------------------------------------------------
SORTS: Final = {
    "name": lambda row: (row.name.lower(),),
    "status": lambda row: (data.STATUSES.index(row.status), row.name.lower()),
    "alarms": lambda row: (-row.open_alarms, row.name.lower()),
    "score": lambda row: (-(row.worst_score or -1.0), row.name.lower()),
    "data": lambda row: (row.last_point or datetime.min.replace(tzinfo=UTC),),
    "model": lambda row: (row.model_version or 0, row.name.lower()),
}


def _fleet_rows(runtime: Runtime, session: ConsoleSession, sort: str, q: str, status: str) -> Any:
    stale_after = timedelta(minutes=runtime.settings.console_stale_minutes)
    with runtime.sessions() as db:
        rows = data.fleet(session=db, only=session.principal.series, stale_after=stale_after)
    if q:
        rows = [row for row in rows if q.lower() in row.name.lower()]
    if status:
        rows = [row for row in rows if row.status == status]
    return sorted(rows, key=SORTS.get(sort, SORTS["status"]))


FleetSort = Annotated[str, Query(pattern="^(name|status|alarms|score|data|model)$")]
FleetStatus = Annotated[str, Query(pattern="^(|" + "|".join(data.STATUSES) + ")$")]


@router.get("/fleet", response_class=HTMLResponse)
async def fleet_page(
    request: Request,
    runtime: RuntimeDep,
    session: SessionCookie,
    sort: FleetSort = "status",
    q: Annotated[str, Query(max_length=100)] = "",
    status: FleetStatus = "",
) -> HTMLResponse:
    rows = await run_in_threadpool(_fleet_rows, runtime, session, sort, q, status)
    return _render(
        request,
        "fleet.html",
        session,
        rows=rows,
        sort=sort,
        q=q,
        status=status,
        statuses=data.STATUSES,
        status_text=data.STATUS_TEXT,
        sparkline=data.sparkline_path,
    )


@router.get("/fleet/rows", response_class=HTMLResponse)
async def fleet_rows(
    request: Request,
    runtime: RuntimeDep,
    session: SessionCookie,
    sort: FleetSort = "status",
    q: Annotated[str, Query(max_length=100)] = "",
    status: FleetStatus = "",
) -> HTMLResponse:
    rows = await run_in_threadpool(_fleet_rows, runtime, session, sort, q, status)
    return _render(request, "fleet_rows.html", session, rows=rows, sparkline=data.sparkline_path)


# -- one series -------------------------------------------------------------------------------
SeriesQuery = Annotated[int, Query(ge=1, le=MAX_DB_ID)]


@router.get("/series/{series_id}", response_class=HTMLResponse)
async def series_page(
    request: Request,
    runtime: RuntimeDep,
    session: SessionCookie,
    series_id: SeriesIdPath,
) -> HTMLResponse:
    def load() -> dict[str, Any]:
        with runtime.sessions() as db:
            series = data.series_for(session=db, principal=session.principal, series_id=series_id)
            extent = data.data_extent(session=db, series_id=series_id)
            return {
                "series": {
                    "id": series.id,
                    "name": series.name,
                    "channels": list(series.channels),
                    "classes": dict(series.classes),
                },
                "extent": extent,
            }

    return _render(request, "series.html", session, **await run_in_threadpool(load))


@router.get("/api/series/{series_id}/chart")
async def series_chart(
    runtime: RuntimeDep,
    session: ApiSession,
    series_id: SeriesIdPath,
    start: Annotated[TimestampUs | None, Query(description="ISO-8601 or epoch seconds")] = None,
    end: Annotated[TimestampUs | None, Query(description="ISO-8601 or epoch seconds")] = None,
    width: Annotated[int, Query(ge=10, le=MAX_WIDTH)] = 1200,
) -> JSONResponse:
    """Every channel over [start, end] (default: all the data), at most 2 × width points each
    (min-max per pixel column), with scores, the threshold and labels."""

    def load() -> dict[str, Any]:
        with runtime.sessions() as db:
            series = data.series_for(session=db, principal=session.principal, series_id=series_id)
            extent = data.data_extent(session=db, series_id=series_id)
            if extent is None:
                return {"series_id": series_id, "channels": [], "points": 0}
            lo = extent[0] if start is None else start
            hi = extent[1] if end is None else end
            if hi <= lo:
                raise InvalidInput("end must be after start", field="end")
            return data.chart(session=db, series=series, start=lo, end=hi, width=width)

    return JSONResponse(await run_in_threadpool(load), headers={"Cache-Control": "no-store"})


# -- alarms, models, feedback ----------------------------------------------------------------
def _visible(runtime: Runtime, session: ConsoleSession) -> list[dict[str, Any]]:
    with runtime.sessions() as db:
        return [
            {"id": s.id, "name": s.name, "classes": dict(s.classes), "channels": list(s.channels)}
            for s in data.visible_series(session=db, only=session.principal.series)
        ]


@router.get("/alarms", response_class=HTMLResponse)
async def alarms_page(
    request: Request, runtime: RuntimeDep, session: SessionCookie
) -> HTMLResponse:
    visible = await run_in_threadpool(_visible, runtime, session)
    return _render(request, "alarms.html", session, series_list=visible)


def _chosen(visible: list[dict[str, Any]], series_id: int | None) -> dict[str, Any] | None:
    if series_id is not None:
        found = next((s for s in visible if s["id"] == series_id), None)
        if found is None:
            raise Forbidden(f"this API key may not use series {series_id} (or it does not exist)")
        return found
    return visible[0] if visible else None


@router.get("/models", response_class=HTMLResponse)
async def models_page(
    request: Request,
    runtime: RuntimeDep,
    session: SessionCookie,
    series_id: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
) -> HTMLResponse:
    def load() -> dict[str, Any]:
        visible = _visible(runtime, session)
        chosen = _chosen(visible, series_id)
        versions: list[dict[str, Any]] = []
        if chosen is not None:
            with runtime.sessions() as db:
                series = data.series_for(
                    session=db, principal=session.principal, series_id=chosen["id"]
                )
                versions = data.versions_page(session=db, series=series)
        return {"series_list": visible, "chosen": chosen, "versions": versions}

    return _render(request, "models.html", session, **await run_in_threadpool(load))


@router.get("/feedback", response_class=HTMLResponse)
async def feedback_page(
    request: Request,
    runtime: RuntimeDep,
    session: SessionCookie,
    series_id: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
) -> HTMLResponse:
    def load() -> dict[str, Any]:
        visible = _visible(runtime, session)
        chosen = _chosen(visible, series_id)
        view = None
        if chosen is not None:
            with runtime.sessions() as db:
                series = data.series_for(
                    session=db, principal=session.principal, series_id=chosen["id"]
                )
                view = feedback_view(
                    session=db, series=series, default_samples=runtime.settings.score_samples
                )
        return {"series_list": visible, "chosen": chosen, "view": view}

    return _render(request, "feedback.html", session, **await run_in_threadpool(load))


__all__ = ["STATIC_DIR", "SignInNeeded", "csrf_token", "router"]
