"""The score log: scored windows written in bulk (COPY on Postgres), exactly as scored, and
kept for the next flush when a write fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import ScoreRecord
from app.db.session import make_engine, make_sessionmaker
from app.scoring.log import ScoreLog
from models import ScoreBatch
from tests.utils.stream import create_series


def _batch(n: int) -> ScoreBatch:
    rng = np.random.default_rng(0)
    return ScoreBatch(
        raw_score=rng.normal(size=n),
        score=rng.random(n),
        p_false_positive=np.zeros(n),
        p_false_negative=np.zeros(n),
        adjusted_score=rng.random(n) * 3,
        is_anomaly=np.zeros(n, dtype=bool),
        class_probabilities=np.zeros((n, 4)),
        channel_contributions=np.zeros((n, 3)),
        step_contributions=np.zeros((n, 16)),
        quality=np.zeros((n, 3), dtype=np.uint8),
        threshold=1.0,
    )


def test_flushed_windows_are_stored_exactly(sessions: sessionmaker[Session]) -> None:
    series_id = create_series(sessions, name="log")
    windows = np.random.default_rng(1).normal(size=(5, 16, 3)).astype(np.float32)
    batch = _batch(5)
    flagged = [True, False, True, False, False]
    log = ScoreLog(sessions)
    ids = log.append(
        series_id=series_id,
        version=2,
        windows=windows,
        batch=batch,
        flagged=flagged,
        spans=[(10 * i, 10 * i + 15) for i in range(5)],
    )
    assert log.flush() == 5 and log.pending == 0
    with sessions() as session:
        stored = {r.id: r for r in session.scalars(select(ScoreRecord))}
    assert set(stored) == set(ids)
    for i, score_id in enumerate(ids):
        record = stored[score_id]
        assert (record.series_id, record.model_version) == (series_id, 2)
        assert (record.start_ts, record.end_ts) == (10 * i, 10 * i + 15)
        assert np.array_equal(np.frombuffer(record.window, "<f4").reshape(16, 3), windows[i])
        assert record.raw_score == batch.raw_score[i]
        assert record.adjusted_score == batch.adjusted_score[i]
        assert record.is_anomaly is flagged[i]
        assert record.created_at is not None


def test_a_failed_flush_keeps_the_rows_for_the_next(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # A database without the schema: every write fails, as with a database that went away.
    unmigrated = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'empty.db'}", role="tests"))
    log = ScoreLog(unmigrated)
    log.append(
        series_id=1,
        version=1,
        windows=np.zeros((3, 16, 3), dtype=np.float32),
        batch=_batch(3),
        flagged=[False] * 3,
    )
    with pytest.raises(SQLAlchemyError):
        log.flush()
    assert log.pending == 3


def test_the_scores_of_a_deleted_series_are_dropped_not_retried(
    sessions: sessionmaker[Session],
) -> None:
    live = create_series(sessions)
    log = ScoreLog(sessions)
    for series_id in (987654, live):  # 987654: deleted since the windows were scored
        log.append(
            series_id=series_id,
            version=1,
            windows=np.zeros((3, 16, 3), dtype=np.float32),
            batch=_batch(3),
            flagged=[False] * 3,
        )
    assert log.flush() == 3
    assert log.pending == 0
    with sessions() as session:
        assert {r.series_id for r in session.scalars(select(ScoreRecord))} == {live}
