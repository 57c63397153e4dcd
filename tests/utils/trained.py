"""Training jobs and trained series, made through the real worker."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job, Series
from app.training.jobs import enqueue_training
from app.training.worker import Worker
from tests.utils.stream import Stream, create_series, insert_points, make_stream


class NoHeartbeat:
    """The parts of the heartbeat that `Worker._train` uses, for a test that drives it."""

    lost = threading.Event()

    def report(self, progress: float) -> None:
        pass


def queue_job(sessions: sessionmaker[Session], series_id: int) -> int:
    """Queue a training job (or find the open one and make it due now) as the API does,
    without its check for enough points; returns its id."""
    with sessions() as session, session.begin():
        series = session.get(Series, series_id)
        assert series is not None
        job, _ = enqueue_training(session=session, series=series, reason="manual")
        job.not_before = None
        session.flush()
        return job.id


def read_job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def train_now(sessions: sessionmaker[Session], settings: Settings, series_id: int) -> int:
    """Queue a job and run it in this process; returns the job id."""
    job_id = queue_job(sessions, series_id)
    Worker(settings, sessions=sessions).run_once()
    return job_id


def trained_series(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    name: str = "pump-1",
    n_points: int = 400,
) -> tuple[int, Stream]:
    series_id = create_series(sessions, name=name)
    stream = make_stream(n_points)
    insert_points(sessions, series_id, stream)
    train_now(sessions, settings, series_id)
    return series_id, stream
