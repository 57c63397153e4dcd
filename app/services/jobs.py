"""Training jobs: queueing (one open job per series), and reading them back."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import JOB_QUEUED, JOB_RUNNING, Job, Series
from app.errors import NotFound, SeriesNotFound


def open_job(*, session: Session, series_id: int) -> Job | None:
    return session.scalar(
        select(Job).where(Job.series_id == series_id, Job.status.in_((JOB_QUEUED, JOB_RUNNING)))
    )


def enqueue_training(*, session: Session, series: Series, reason: str) -> tuple[Job, bool]:
    """Queue a training job for `series`, or return the one already queued or running.

    The second element says whether a new job was created. A partial unique index allows
    one open job per series, so two racing requests cannot both queue one.
    """
    existing = open_job(session=session, series_id=series.id)
    if existing is not None:
        return existing, False
    job = Job(series_id=series.id, status=JOB_QUEUED, reason=reason)
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        raced = open_job(session=session, series_id=series.id)
        if raced is None:
            raise
        return raced, False
    series.labels_since_train = 0
    return job, True


def queue_manual_training(*, session: Session, series_id: int) -> tuple[Job, bool]:
    """Queue a job asked for through the API (committed); True when a new one was created."""
    series = session.get(Series, series_id)
    if series is None:
        raise SeriesNotFound(series_id)
    job, created = enqueue_training(session=session, series=series, reason="manual")
    session.commit()
    return job, created


def get_job(*, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job
