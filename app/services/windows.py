"""Stored windows: cutting the points of a time range into the series' windows."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Point
from app.errors import InvalidInput
from app.schemas.common import TimestampError, to_us
from app.scoring.registry import SeriesInfo
from app.training.pipeline import cut_windows, gather


def parse_instant(value: Any, *, field: str) -> int:
    """An ISO-8601 string or epoch seconds -> microseconds since the epoch (UTC)."""
    if value is None:
        raise InvalidInput("is required: an ISO-8601 timestamp or epoch seconds", field=field)
    try:
        return to_us(value)
    except TimestampError as exc:
        raise InvalidInput(str(exc), field=field) from None


def load_range_windows(
    *, sessions: sessionmaker[Session], series: SeriesInfo, start: int, end: int, max_windows: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The series' windows whose points all lie in [start, end], oldest first."""
    t, f = series.window_size, len(series.channels)
    limit = max_windows * series.stride + t
    with sessions() as session:
        rows = session.execute(
            select(Point.ts, Point.values)
            .where(Point.series_id == series.id, Point.ts >= start, Point.ts <= end)
            .order_by(Point.ts)
            .limit(limit)
        ).all()
    if len(rows) < t:
        raise InvalidInput(
            f"the range holds {len(rows)} stored points; a window needs {t}", field="start"
        )
    ts = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    values = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f8").reshape(len(rows), f)
    starts = cut_windows(len(rows), window_size=t, stride=series.stride)[:max_windows]
    windows = gather(values.astype(np.float32), starts, t)
    spans = [(int(ts[s]), int(ts[s + t - 1])) for s in starts.tolist()]
    return windows, spans
