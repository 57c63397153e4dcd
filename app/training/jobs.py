"""Training jobs: queueing (one open job per series), retrains armed by labels, and reading
them back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.models import (
    JOB_QUEUED,
    JOB_RUNNING,
    MODEL_ACTIVE,
    Job,
    Label,
    ModelVersion,
    Point,
    Series,
)
from app.errors import NotEnoughPoints, NotFound, SeriesNotFound
from app.schemas.paging import decode_cursor, page_of
from app.training.pipeline import window_count


def open_job(*, session: Session, series_id: int) -> Job | None:
    return session.scalar(
        select(Job).where(Job.series_id == series_id, Job.status.in_((JOB_QUEUED, JOB_RUNNING)))
    )


def enqueue_training(
    *, session: Session, series: Series, reason: str, not_before: datetime | None = None
) -> tuple[Job, bool]:
    """Queue a training job for `series`, or return the one already queued or running.

    The second element says whether a new job was created. A partial unique index allows
    one open job per series, so two racing requests cannot both queue one.
    """
    existing = open_job(session=session, series_id=series.id)
    if existing is not None:
        return existing, False
    job = Job(series_id=series.id, status=JOB_QUEUED, reason=reason, not_before=not_before)
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        raced = open_job(session=session, series_id=series.id)
        if raced is None:
            raise
        return raced, False
    return job, True


@dataclass(frozen=True)
class TrainingData:
    """What a training job would find: stored points and the windows cut from them."""

    points: int
    windows: int
    feedback_windows: int
    """Windows that feedback on posted (not stored) windows adds, at most."""
    windows_needed: int
    points_needed: int

    @property
    def enough(self) -> bool:
        return self.points >= self.points_needed


def training_data(*, session: Session, series: Series, settings: Settings) -> TrainingData:
    """How far the series' stored points are from the first training job's minimum.

    The rule is app/training/pipeline.py's: at least `min_train_windows` windows (`window_size`
    points every `stride`), counting feedback on posted windows, and at least two windows of
    stored points (one to validate on). The count stops at the points needed, so it costs
    the same on a series of 10^7 points as on one of 10^3.
    """
    feedback = (
        session.scalar(
            select(func.count())
            .select_from(Label)
            .where(
                Label.series_id == series.id,
                Label.score_id.is_not(None),
                Label.start_ts.is_(None),
                Label.deleted_at.is_(None),
            )
        )
        or 0
    )
    windows_needed = max(settings.min_train_windows - feedback, 2)
    points_needed = series.window_size + (windows_needed - 1) * series.stride
    capped = select(Point.ts).where(Point.series_id == series.id).limit(points_needed).subquery()
    points = session.scalar(select(func.count()).select_from(capped)) or 0
    windows = window_count(points, window_size=series.window_size, stride=series.stride)
    return TrainingData(points, windows, feedback, windows_needed, points_needed)


def not_enough_points(series: Series, data: TrainingData, settings: Settings) -> NotEnoughPoints:
    feedback = (
        f" (besides {data.feedback_windows} from feedback on posted windows)"
        if data.feedback_windows
        else ""
    )
    return NotEnoughPoints(
        f"series {series.name!r} has {data.points} stored points, {data.windows} windows of "
        f"{series.window_size} points every {series.stride}; training needs at least "
        f"{data.windows_needed} windows{feedback}, that is {data.points_needed} points: "
        f"ingest {data.points_needed - data.points} more (VIGIL_MIN_TRAIN_WINDOWS="
        f"{settings.min_train_windows})"
    )


def queue_manual_training(
    *, session: Session, series_id: int, settings: Settings
) -> tuple[Job, bool]:
    """Queue a job asked for through the API (committed); True when a new one was created.

    A series with too few points for the job to succeed is refused at once (422) rather
    than given a job that would fail a moment later. A retrain that labels armed and that is
    still waiting for quiet is due at once.
    """
    series = session.get(Series, series_id)
    if series is None:
        raise SeriesNotFound(series_id)
    existing = open_job(session=session, series_id=series.id)
    if existing is not None:
        if existing.status == JOB_QUEUED and existing.not_before is not None:
            existing.not_before = None
            session.commit()
        return existing, False
    data = training_data(session=session, series=series, settings=settings)
    if not data.enough:
        raise not_enough_points(series, data, settings)
    job, created = enqueue_training(session=session, series=series, reason="manual")
    session.commit()
    return job, created


def arm_retrain(*, session: Session, series: Series, settings: Settings, count: int) -> Job | None:
    """The retrain that `count` labels since the last training start arm, debounced.

    Armed once `settings.retrain_after_labels` labels have arrived on a series that has an
    active model; it starts `settings.retrain_quiet_seconds` after the latest of them, so a
    batch of verdicts trains one version that includes them all. A job already queued by
    labels waits the longer; a running job cannot take new labels: the worker queues a
    follow-up when it ends (None here)."""
    threshold = settings.retrain_after_labels
    if threshold <= 0 or count < threshold or not _has_active_model(session, series.id):
        return None
    due = utcnow() + timedelta(seconds=settings.retrain_quiet_seconds)
    job, created = enqueue_training(session=session, series=series, reason="labels", not_before=due)
    if created or job.status != JOB_QUEUED:
        return job if job.status == JOB_QUEUED else None
    if job.not_before is not None:
        job.not_before = due
    return job


def _has_active_model(session: Session, series_id: int) -> bool:
    found = session.scalar(
        select(ModelVersion.id).where(
            ModelVersion.series_id == series_id, ModelVersion.status == MODEL_ACTIVE
        )
    )
    return found is not None


def list_jobs(
    *,
    session: Session,
    series_id: int | None,
    status: str | None,
    limit: int,
    cursor: str | None = None,
    before: int | None = None,
    only: frozenset[int] | None = None,
) -> tuple[list[Job], str | None]:
    """A page of jobs, newest first, and the cursor of the next; `before` (a job id, the
    deprecated way to page on) still works; `only`: of these series alone."""
    after = decode_cursor(cursor, arity=1)
    query = select(Job)
    if only is not None:
        query = query.where(Job.series_id.in_(only))
    if series_id is not None:
        if session.get(Series, series_id) is None:
            raise SeriesNotFound(series_id)
        query = query.where(Job.series_id == series_id)
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        query = query.where(Job.id < int(after[0]))
    if before is not None:
        query = query.where(Job.id < before)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return page_of(rows, limit=limit, key=lambda job: (job.id,))


def get_job(*, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job
