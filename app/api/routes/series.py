"""Series: create (scope `ingest`), read (scope `read`), and add classes or move the threshold
(scope `train`: detection settings)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from app.api.deps import Admin, Ingester, Reader, RuntimeDep, SessionDep, Trainer
from app.errors import Forbidden
from app.schemas.common import AUTH_RESPONSES, MAX_DB_ID, SeriesIdPath
from app.schemas.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from app.schemas.series import SeriesCreate, SeriesOut, SeriesPage, SeriesUpdate
from app.services.series import (
    create_series,
    delete_series,
    get_series,
    list_series,
    update_series,
)

router = APIRouter(prefix="/v1", tags=["series"], responses=AUTH_RESPONSES)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "The series does not exist"}}


@router.post(
    "/series",
    status_code=status.HTTP_201_CREATED,
    summary="Create a series",
    description=(
        "Declares a multivariate series: its channels, window geometry and label classes. "
        "The built-in classes `normal`, `anomaly`, `false_positive` (normal kind) and "
        "`false_negative` (anomaly kind) are always added. The `Location` header names it."
    ),
    responses={409: {"description": "A series with this name exists"}},
)
def create(body: SeriesCreate, session: SessionDep, response: Response, key: Ingester) -> SeriesOut:
    if key.series is not None:
        raise Forbidden("this API key is restricted to certain series and cannot create one")
    series = create_series(session=session, spec=body)
    response.headers["Location"] = f"/v1/series/{series.id}"
    return SeriesOut.model_validate(series)


@router.get(
    "/series",
    summary="List series, oldest first",
    description=(
        "A page of `limit` series and `next_cursor`: pass it as `cursor` for the next page "
        "(null: no more). `offset` is deprecated (use the cursor). A key restricted to "
        "certain series sees only those."
    ),
)
def list_all(
    session: SessionDep,
    key: Reader,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_ID, deprecated=True)] = 0,
) -> SeriesPage:
    found, next_cursor = list_series(
        session=session, limit=limit, cursor=cursor, offset=offset, only=key.series
    )
    return SeriesPage(series=[SeriesOut.model_validate(s) for s in found], next_cursor=next_cursor)


@router.get("/series/{series_id}", summary="Read a series", responses=NOT_FOUND)
def read(series_id: SeriesIdPath, session: SessionDep, _: Reader) -> SeriesOut:
    return SeriesOut.model_validate(get_series(session=session, series_id=series_id))


@router.patch(
    "/series/{series_id}",
    summary="Add classes or change the threshold quantile",
    description=(
        "Classes are only added: changing the kind of an existing class or removing one "
        "(a null kind) gives 409, because trained models depend on them. The new threshold "
        "quantile applies to scores from the next request on. Changes what the series alarms "
        "on and trains for, so it needs the `train` scope (or `admin`)."
    ),
    responses={**NOT_FOUND, 409: {"description": "A class would change kind or disappear"}},
)
def patch(
    series_id: SeriesIdPath,
    body: SeriesUpdate,
    session: SessionDep,
    runtime: RuntimeDep,
    _: Trainer,
) -> SeriesOut:
    series = update_series(session=session, series_id=series_id, update=body)
    runtime.registry.forget_series(series.id)
    return SeriesOut.model_validate(series)


@router.delete(
    "/series/{series_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a series and everything it owns (scope `admin`)",
    description=(
        "Removes the series with its points, labels, scores, jobs and model versions (and "
        "alarms) in one transaction, and writes an audit record (GET /v1/audit) of who did "
        "it and how many rows of each table went. A training job of the series that is "
        "running meanwhile ends without storing anything. 404 once it is gone."
    ),
    responses=NOT_FOUND,
)
def delete(
    series_id: SeriesIdPath, session: SessionDep, runtime: RuntimeDep, key: Admin
) -> Response:
    delete_series(session=session, series_id=series_id, key_id=key.id)
    runtime.registry.forget_series(series_id)
    runtime.registry.forget_active(series_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
