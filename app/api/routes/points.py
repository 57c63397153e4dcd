"""Points: bulk ingestion (scope `ingest`) and reading a time range back (scope `read`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app.api.deps import Ingester, Reader, RuntimeDep, SessionDep
from app.errors import ServiceBusy
from app.schemas.common import AUTH_RESPONSES, RETRY_AFTER_HEADER, SeriesIdPath, TimestampUs
from app.schemas.paging import CursorQuery
from app.schemas.points import POINTS_REQUEST_BODY, IngestResult, PointsOut
from app.services.points import RawBody, ingest, read_points, received_body

router = APIRouter(prefix="/v1", tags=["points"], responses=AUTH_RESPONSES)

MAX_READ_POINTS = 100_000


@router.post(
    "/series/{series_id}/points",
    summary="Ingest a batch of points (JSON or CSV)",
    description=(
        "Upserts rows on (series, timestamp): re-sending a batch changes nothing and reports "
        "every row as `unchanged`; `updated` counts stored rows whose values changed. When a "
        "timestamp repeats within one batch, its last row wins, so `inserted + updated + "
        "unchanged` counts distinct timestamps and `received` counts rows. ISO-8601 "
        "timestamps without a UTC offset are taken as UTC, and `warnings` says how many. "
        "The whole batch is validated before anything is written; an invalid batch writes "
        "nothing and the error names the field and row (JSON) or line (CSV). At most "
        "`VIGIL_MAX_POINTS_ROWS` rows per request (413 beyond). Bodies over "
        "`VIGIL_BULK_MIN_BYTES` (1 MiB) are parsed and written at most "
        "`VIGIL_BULK_CONCURRENCY` (2) at a time per API process; one that waits longer than "
        '`VIGIL_BULK_WAIT_SECONDS` (30 s) for its turn gets 503 "busy, retry" with '
        "Retry-After, and nothing is written. A body over 256 KiB is received into a "
        "temporary file rather than memory, and parsed from there a slice at a time."
    ),
    openapi_extra={"requestBody": POINTS_REQUEST_BODY},
    responses={
        404: {"description": "The series does not exist"},
        413: {"description": "The body or the number of rows is over the limit"},
        415: {"description": "The body is neither application/json nor text/csv"},
        503: {
            "description": "Busy: too many large bodies in progress, or the database stayed "
            "locked; retry after Retry-After seconds",
            "headers": RETRY_AFTER_HEADER,
        },
    },
)
async def ingest_points(
    series_id: SeriesIdPath, request: Request, session: SessionDep, runtime: RuntimeDep, _: Ingester
) -> IngestResult:
    async def parse_and_write(body: RawBody) -> IngestResult:
        return await run_in_threadpool(
            ingest,
            session=session,
            series_id=series_id,
            body=body,
            content_type=request.headers.get("content-type"),
            max_rows=runtime.settings.max_points_rows,
            newest=runtime.gauges.newest,
        )

    declared = request.headers.get("content-length", "")
    if not declared.isdigit():  # its size is known once received (a big one in a file)
        async with received_body(request.stream()) as body, runtime.bulk.turn(len(body)):
            return await parse_and_write(body)
    # NOTE: the turn is taken before the body is read when its length is declared, so that a
    # big body waiting for its turn is not received (not even spooled) meanwhile.
    reading = False
    try:
        async with runtime.bulk.turn(int(declared)):
            reading = True
            async with received_body(request.stream()) as body:
                return await parse_and_write(body)
    except ServiceBusy:
        # The unread body of a request that never got its turn is read and dropped, so that
        # the client, still sending it, reads the 503 rather than a reset connection.
        if not reading:
            async for _chunk in request.stream():
                pass
        raise


@router.get(
    "/series/{series_id}/points",
    summary="Read stored points, oldest first",
    description=(
        "Points with start <= timestamp <= end (both optional), `limit` at a time, and "
        "`next_cursor`: pass it as `cursor` (with the same start and end) for the next page; "
        "null: no more. A missing value reads back as null."
    ),
    response_model=PointsOut,
    responses={404: {"description": "The series does not exist"}},
)
def list_points(
    series_id: SeriesIdPath,
    session: SessionDep,
    _: Reader,
    start: Annotated[TimestampUs | None, Query(description="ISO-8601 or epoch seconds")] = None,
    end: Annotated[TimestampUs | None, Query(description="ISO-8601 or epoch seconds")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_READ_POINTS)] = 1000,
    cursor: CursorQuery = None,
) -> Response:
    page = read_points(
        session=session, series_id=series_id, start=start, end=end, limit=limit, cursor=cursor
    )
    return Response(page.to_json(), media_type="application/json")
