"""What ingestion tells the detector: the time range of a series that a batch wrote.

One upsert of one small row per batch, in the batch's own transaction: the detector
(detector.py) finds the series there, so ingestion never waits for scoring.

That row is the one lock every write to a series shares, so it is taken last, after the
points' own row locks and right before the commit, in every transaction that takes it:
ingestion (app/services/points.py runs `PG_MARK_WRITTEN` in the statement that upserts the
points) and the detector (whose pass ends with it). It is then held for a moment, and never
by a transaction that waits for another lock meanwhile.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import DetectState

PG_MARK_WRITTEN = (
    "INSERT INTO detect_state (series_id, dirty_from, dirty_until, dirty_at) "
    "VALUES (%(series_id)s, %(first_ts)s, %(last_ts)s, %(now)s) "
    "ON CONFLICT (series_id) DO UPDATE SET "
    "dirty_from = least(coalesce(detect_state.dirty_from, EXCLUDED.dirty_from), "
    "EXCLUDED.dirty_from), "
    "dirty_until = greatest(coalesce(detect_state.dirty_until, EXCLUDED.dirty_until), "
    "EXCLUDED.dirty_until), "
    "dirty_at = coalesce(detect_state.dirty_at, EXCLUDED.dirty_at)"
)
"""`mark_written` for a raw psycopg cursor (parameters series_id, first_ts, last_ts, now).
app/services/points.py `_PG_UPSERT` marks the same way within its own statement."""


def mark_written(*, session: Session, series_id: int, first_ts: int, last_ts: int) -> None:
    """Widen the series' changed range to cover [first_ts, last_ts] (microseconds)."""
    least: Any
    greatest: Any
    insert: Any
    if session.get_bind().dialect.name == "postgresql":
        insert, least, greatest = postgresql.insert, func.least, func.greatest
    else:  # SQLite's two-argument min() and max() are scalar functions
        insert, least, greatest = sqlite.insert, func.min, func.max
    statement = insert(DetectState).values(
        series_id=series_id, dirty_from=first_ts, dirty_until=last_ts, dirty_at=utcnow()
    )
    new = statement.excluded
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[DetectState.series_id],
            set_={
                "dirty_from": least(
                    func.coalesce(DetectState.dirty_from, new.dirty_from), new.dirty_from
                ),
                "dirty_until": greatest(
                    func.coalesce(DetectState.dirty_until, new.dirty_until), new.dirty_until
                ),
                "dirty_at": func.coalesce(DetectState.dirty_at, new.dirty_at),
            },
        )
    )
