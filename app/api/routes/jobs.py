"""Training: queue a job for a series and follow it."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from app.api.deps import Reader, RuntimeDep, SessionDep, Trainer
from app.schemas.common import (
    AUTH_RESPONSES,
    IDEMPOTENCY_KEY_PARAMETER,
    IDEMPOTENCY_RESPONSES,
    MAX_DB_ID,
    JobIdPath,
    SeriesIdPath,
)
from app.schemas.jobs import JobOut, JobPage
from app.schemas.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from app.training.jobs import get_job, list_jobs, queue_manual_training

router = APIRouter(prefix="/v1", tags=["jobs"], responses=AUTH_RESPONSES)


@router.post(
    "/series/{series_id}/train",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Queue a retrain of the series' model",
    description=(
        "Queues a training job and returns 202 with its `Location`. If a job for the series is "
        "already queued or running, that job is returned with 200 instead. A series with too "
        "few stored points to train on gets 422 at once, saying how many points and windows "
        "it has and needs: `VIGIL_MIN_TRAIN_WINDOWS` windows (default 8) of `window_size` "
        "points every `stride`, so `window_size + (VIGIL_MIN_TRAIN_WINDOWS - 1) × stride` "
        "points. Send an `Idempotency-Key` to make a retry safe."
    ),
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
    responses={
        200: {"model": JobOut, "description": "A job was already queued or running"},
        404: {"description": "The series does not exist"},
        **IDEMPOTENCY_RESPONSES,
        422: {
            "description": (
                "Too few stored points to train on, an invalid series id, or an "
                "Idempotency-Key reused for another request"
            )
        },
    },
)
def train(
    series_id: SeriesIdPath,
    session: SessionDep,
    runtime: RuntimeDep,
    _: Trainer,
    response: Response,
) -> JobOut:
    job, created = queue_manual_training(
        session=session, series_id=series_id, settings=runtime.settings
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return JobOut.model_validate(job)


@router.get(
    "/jobs",
    summary="List training jobs, newest first",
    description=(
        "A page of `limit` jobs and `next_cursor`: pass it as `cursor` for the next page "
        "(null: no more). `before` (the smallest `id` of the previous page) is deprecated "
        "and still works."
    ),
    responses={404: {"description": "The series named by `series_id` does not exist"}},
)
def list_all(
    session: SessionDep,
    key: Reader,
    series_id: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
    status_: Annotated[
        Literal["queued", "running", "succeeded", "failed"] | None, Query(alias="status")
    ] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_DB_ID, deprecated=True)] = None,
) -> JobPage:
    if series_id is not None:
        key.require_series(series_id)
    found, next_cursor = list_jobs(
        session=session,
        series_id=series_id,
        status=status_,
        limit=limit,
        cursor=cursor,
        before=before,
        only=key.series,
    )
    return JobPage(jobs=[JobOut.model_validate(job) for job in found], next_cursor=next_cursor)


@router.get(
    "/jobs/{job_id}",
    summary="A training job's status, progress and result",
    responses={404: {"description": "The job does not exist"}},
)
def read_job(job_id: JobIdPath, session: SessionDep, key: Reader) -> JobOut:
    job = get_job(session=session, job_id=job_id)
    key.require_series(job.series_id)
    return JobOut.model_validate(job)
