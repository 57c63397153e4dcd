"""Stored windows: cutting the points of a time range into the series' windows, page by page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Point
from app.errors import InvalidInput
from app.schemas.common import TimestampError, to_us
from app.schemas.paging import decode_cursor, encode_cursor
from app.scoring.registry import SeriesInfo
from app.training.pipeline import cut_windows, gap_limit_us, gather
from models import impute_missing, missing_fraction


def parse_instant(value: Any, *, field: str) -> int:
    """An ISO-8601 string or epoch seconds -> microseconds since the epoch (UTC)."""
    if value is None:
        raise InvalidInput("is required: an ISO-8601 timestamp or epoch seconds", field=field)
    try:
        return to_us(value)
    except TimestampError as exc:
        raise InvalidInput(str(exc), field=field) from None


@dataclass(frozen=True)
class RangeWindows:
    """One page of a stored range's windows."""

    windows: np.ndarray
    """(N, T, F) float32 raw values, NaN where a value is missing."""
    spans: list[tuple[int, int]]
    """Each window's first and last timestamp, µs."""
    next_cursor: str | None
    """Resumes at the first window this page did not hold; None: the range is done."""


@dataclass(frozen=True)
class ScoringInput:
    """Windows of stored points made ready for the model: the rule for missing values."""

    windows: np.ndarray
    """(M, T, F) the windows to score (M <= N), missing values imputed."""
    scored: np.ndarray
    """(N,) bool: which of the N windows are scored; the others have too much missing."""
    missing: np.ndarray
    """(N,) the share of each window's values that was missing."""


def prepare_for_scoring(
    windows: np.ndarray, *, fill: np.ndarray, max_missing: float
) -> ScoringInput:
    """Leave out the windows with more than `max_missing` of their values missing and impute
    the rest (models.data.impute_missing; `fill` (F,): the model's training means,
    `model.normalisation.mean`). Every caller that scores stored windows goes through here."""
    n = windows.shape[0]
    if not np.isnan(windows).any():  # the usual case, and every posted batch: one pass only
        return ScoringInput(windows, np.ones(n, dtype=bool), np.zeros(n, dtype=np.float64))
    missing = missing_fraction(windows)
    scored = missing <= max_missing
    chosen = windows if bool(scored.all()) else windows[scored]
    return ScoringInput(impute_missing(chosen, fill), scored, missing)


def load_range_windows(
    *,
    sessions: sessionmaker[Session],
    series: SeriesInfo,
    start: int,
    end: int,
    max_windows: int,
    gap_factor: float,
    interval_us: int | None = None,
    cursor: str | None = None,
) -> RangeWindows:
    """Up to `max_windows` of the series' windows whose points all lie in [start, end],
    oldest first, cut as training cuts them (app/training/pipeline.py `cut_windows`: never
    across a gap longer than the series' limit), and the cursor of the next page.

    The cursor holds where the next page starts and the gap limit of the first page, so that
    the pages of one range give every window exactly once. `interval_us`: the sampling interval
    the scoring model recorded at training (None: the median of the first page's points).
    """
    resumed = decode_cursor(cursor, arity=2)
    max_gap_us: int | None = None
    if resumed is not None:
        after, gap = resumed
        if not isinstance(after, int) or not isinstance(gap, int):
            raise InvalidInput(
                "is not a cursor of this range; pass `next_cursor` as it is", field="cursor"
            )
        start, max_gap_us = max(start, after), (gap or None)
    t, f = series.window_size, len(series.channels)
    limit = max_windows * series.stride + t
    with sessions() as session:
        rows = session.execute(
            select(Point.ts, Point.values)
            .where(Point.series_id == series.id, Point.ts >= start, Point.ts <= end)
            .order_by(Point.ts)
            .limit(limit + 1)
        ).all()
    following = int(rows[limit][0]) if len(rows) > limit else None  # the next page's first
    truncated = following is not None
    rows = rows[:limit]
    if resumed is None and len(rows) < t:
        raise InvalidInput(
            f"the range holds {len(rows)} stored points; a window needs {t}", field="start"
        )
    ts = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    values = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f8").reshape(len(rows), f)
    if resumed is None:
        max_gap_us = gap_limit_us(
            ts, max_gap=series.max_gap, factor=gap_factor, interval_us=interval_us
        )
    starts = cut_windows(ts, window_size=t, stride=series.stride, max_gap_us=max_gap_us)
    if resumed is None and not len(starts):
        raise InvalidInput(
            f"the range holds {len(rows)} stored points but no run of {t} without a gap longer "
            f"than {(max_gap_us or 0) / 1e6:g} s: windows never span a gap (the series' "
            "max_gap)",
            field="start",
        )
    next_index = _next_index(ts, starts, max_windows, truncated, series.stride, max_gap_us)
    starts = starts[:max_windows]
    windows = gather(values.astype(np.float32), starts, t)
    spans = [(int(ts[s]), int(ts[s + t - 1])) for s in starts.tolist()]
    next_cursor = None
    if next_index is not None:
        resume_at = int(ts[next_index]) if next_index < len(ts) else following
        next_cursor = encode_cursor((int(resume_at or 0), max_gap_us or 0))
    return RangeWindows(windows, spans, next_cursor)


def _next_index(
    ts: np.ndarray,
    starts: np.ndarray,
    max_windows: int,
    truncated: bool,
    stride: int,
    max_gap_us: int | None,
) -> int | None:
    """The index of the point the next page starts at (the first window this page leaves
    out), or None when the range is done."""
    if len(starts) > max_windows:
        return int(starts[max_windows])
    if not truncated:
        return None
    # The points ran out before the range did: resume where the last run's next window
    # would start (the run's windows continue every `stride` points from its first one).
    run_start = 0
    if max_gap_us is not None:
        breaks = np.flatnonzero(np.diff(ts) > max_gap_us) + 1
        run_start = int(breaks[-1]) if len(breaks) else 0
    in_run = starts[starts >= run_start]
    return int(in_run[-1]) + stride if len(in_run) else run_start
