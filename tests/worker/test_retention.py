"""Retention: the worker deletes old points and scores only, a bounded batch at a time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, event, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import Base
from app.db.models import Point, ScoreRecord
from app.services.retention import RETENTION, enforce_retention
from app.training.worker import Worker
from tests.utils.stream import create_series, insert_points, make_stream

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
DAY_US = 86_400 * 1_000_000


def count(sessions: sessionmaker[Session], model: Any, *where: Any) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def seed(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """Two series, each with 30 points 40 days old and 5 from yesterday; 12 scores 10 days
    old and 3 from today."""
    now_us = int(NOW.timestamp() * 1_000_000)
    ids = []
    for name in ("a", "b"):
        series_id = create_series(sessions, name=name)
        stream = make_stream(35)
        stream.ts = np.concatenate(
            [now_us - 40 * DAY_US + np.arange(30) * 1_000_000, now_us - DAY_US + np.arange(5)]
        ).astype(np.int64)
        insert_points(sessions, series_id, stream)
        ids.append(series_id)
    rows = [
        {
            "id": uuid.uuid4(),
            "series_id": ids[0],
            "model_version": 1,
            "created_at": NOW - timedelta(days=10 if i < 12 else 0),
            "window": b"\0" * 4,
            "raw_score": 1.0,
            "adjusted_score": 1.0,
            "is_anomaly": False,
        }
        for i in range(15)
    ]
    with sessions() as session, session.begin():
        session.execute(insert(ScoreRecord), rows)
    return ids[0], ids[1]


def test_old_rows_go_in_batches_and_recent_ones_stay(
    settings: Settings, sessions: sessionmaker[Session], engine: Engine
) -> None:
    seed(sessions)
    settings = settings.model_copy(
        update={
            "points_retention_days": 30,
            "score_retention_hours": 24 * 7,
            "retention_batch_rows": 7,
        }
    )
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        deleted = enforce_retention(sessions=sessions, settings=settings, now=NOW)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert deleted == {"points": 60, "scores": 12}
    assert count(sessions, Point) == 10  # yesterday's 5 of each series
    assert count(sessions, ScoreRecord) == 3
    # Batches of at most 7 rows: 30 points per series -> 5 DELETEs each (the last one empty)
    # and 12 scores -> 2, never one statement for everything.
    point_deletes = [s for s in statements if "points" in s.split("WHERE")[0]]
    score_deletes = [s for s in statements if "scores" in s.split("WHERE")[0]]
    assert len(point_deletes) == 2 * 5
    assert len(score_deletes) == 2


def test_unset_retention_keeps_points_forever(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    seed(sessions)
    assert settings.points_retention_days is None
    deleted = enforce_retention(sessions=sessions, settings=settings, now=NOW)
    assert "points" not in deleted
    assert count(sessions, Point) == 70


def test_the_worker_housekeeping_enforces_it(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    seed(sessions)
    settings = settings.model_copy(update={"points_retention_days": 30})
    worker = Worker(settings, sessions=sessions)
    worker._housekeeping()
    assert count(sessions, Point) == 10


def test_each_rule_names_a_table_and_column_of_the_schema() -> None:
    for rule in RETENTION:
        table = Base.metadata.tables[rule.table]
        assert rule.column in table.c
        if rule.per_series:
            assert [c.name for c in table.primary_key.columns] == ["series_id", rule.column]
