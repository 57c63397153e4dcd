"""Training: queue a job for a series and follow it."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import Reader, SessionDep, Trainer
from app.db.models import Job, Series
from app.errors import SeriesNotFound
from app.schemas.jobs import JobOut
from app.services.jobs import enqueue_training, get_job

router = APIRouter(prefix="/v1", tags=["jobs"])


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        job_id=job.id,
        series_id=job.series_id,
        status=job.status,  # type: ignore[arg-type]
        reason=job.reason,
        progress=job.progress,
        error=job.error,
        model_version=job.model_version,
        metrics=job.metrics,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@router.post(
    "/series/{series_id}/train",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Queue a retrain of the series' model",
    description=(
        "Queues a training job and returns 202 with its `Location`. If a job for the series is "
        "already queued or running, that job is returned with 200 instead."
    ),
    responses={200: {"model": JobOut, "description": "A job was already queued or running"}},
)
def train(series_id: int, session: SessionDep, _: Trainer, response: Response) -> JobOut:
    series = session.get(Series, series_id)
    if series is None:
        raise SeriesNotFound(series_id)
    job, created = enqueue_training(session=session, series=series, reason="manual")
    session.commit()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return job_out(job)


@router.get("/jobs/{job_id}", summary="A training job's status, progress and result")
def read_job(job_id: int, session: SessionDep, _: Reader) -> JobOut:
    return job_out(get_job(session=session, job_id=job_id))
