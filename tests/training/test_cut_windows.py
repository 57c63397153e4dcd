"""Cutting windows from stored points: never across a gap, the same rule for training and
for scoring a stored range."""

from __future__ import annotations

import numpy as np
import pytest

from app.training.pipeline import cut_windows, gap_limit_us, median_interval_us, window_count

SECOND = 1_000_000


def test_without_gaps_windows_start_every_stride_points() -> None:
    ts = np.arange(20, dtype=np.int64) * SECOND
    starts = cut_windows(ts, window_size=8, stride=4, max_gap_us=3 * SECOND)
    assert starts.tolist() == [0, 4, 8, 12]
    assert len(starts) == window_count(20, window_size=8, stride=4)


def test_no_window_spans_a_longer_gap() -> None:
    # 0..9 s, a 60 s pause, then 70..89 s: runs of 10 and 20 points.
    ts = np.concatenate([np.arange(10), 70 + np.arange(20)]).astype(np.int64) * SECOND
    starts = cut_windows(ts, window_size=8, stride=4, max_gap_us=3 * SECOND)
    assert starts.tolist() == [0, 10, 14, 18, 22]  # each run starts its own windows
    for start in starts.tolist():
        assert np.diff(ts[start : start + 8]).max() <= 3 * SECOND
    # Without a limit the pause is inside windows.
    assert cut_windows(ts, window_size=8, stride=4, max_gap_us=None).tolist() == [
        0,
        4,
        8,
        12,
        16,
        20,
    ]


def test_runs_shorter_than_a_window_give_none() -> None:
    ts = np.array([0, 1, 2, 100, 101, 102, 103], dtype=np.int64) * SECOND
    assert cut_windows(ts, window_size=4, stride=1, max_gap_us=2 * SECOND).tolist() == [3]
    assert cut_windows(ts[:3], window_size=4, stride=1, max_gap_us=None).size == 0


def test_a_gap_equal_to_the_limit_is_not_a_break() -> None:
    ts = np.array([0, 1, 2, 5, 6, 7], dtype=np.int64) * SECOND
    assert cut_windows(ts, window_size=6, stride=1, max_gap_us=3 * SECOND).tolist() == [0]
    assert cut_windows(ts, window_size=6, stride=1, max_gap_us=3 * SECOND - 1).size == 0


def test_a_point_count_is_refused() -> None:
    with pytest.raises(TypeError, match="timestamps"):
        cut_windows(40, window_size=8, stride=4, max_gap_us=None)  # type: ignore[arg-type]


def test_the_gap_limit_rule() -> None:
    ts = np.array([0, 2, 4, 6, 106], dtype=np.int64) * SECOND  # median step 2 s
    assert median_interval_us(ts) == 2 * SECOND
    assert gap_limit_us(ts, max_gap=None, factor=3.0) == 6 * SECOND
    assert gap_limit_us(ts, max_gap=None, factor=3.0, interval_us=SECOND) == 3 * SECOND
    assert gap_limit_us(ts, max_gap=30.0, factor=3.0, interval_us=SECOND) == 30 * SECOND
    assert gap_limit_us(ts[:1], max_gap=None, factor=3.0) is None
