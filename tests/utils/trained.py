"""A series with a trained, active model, made through the real worker."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Series
from app.services.jobs import enqueue_training
from app.worker import Worker
from tests.utils.stream import Stream, create_series, insert_points, make_stream


def train_now(sessions: sessionmaker[Session], settings: Settings, series_id: int) -> int:
    """Queue a job and run it in this process; returns the job id."""
    with sessions() as session, session.begin():
        series = session.get(Series, series_id)
        assert series is not None
        job, _ = enqueue_training(session=session, series=series, reason="manual")
        session.flush()
        job_id = job.id
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
