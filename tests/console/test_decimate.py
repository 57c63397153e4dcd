"""Min-max decimation: bounded output, every bucket's extremes kept, fast on 10^6 points."""

from __future__ import annotations

import time

import numpy as np

from app.console.decimate import decimate


def test_keeps_each_buckets_min_and_max_in_time_order() -> None:
    rng = np.random.default_rng(0)
    n, buckets = 1_000_000, 1000
    ts = np.cumsum(rng.integers(1, 2000, n)).astype(np.int64)
    values = np.cumsum(rng.standard_normal(n))
    values[123_456] = 1e6  # one spike must survive
    started = time.perf_counter()
    kept = decimate(ts, values, start=int(ts[0]), end=int(ts[-1]), buckets=buckets)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert len(kept.ts) <= 2 * buckets
    assert np.all(np.diff(kept.ts) > 0)
    assert 1e6 in kept.values
    span = int(ts[-1]) - int(ts[0])
    owner = np.minimum((ts - ts[0]) * buckets // span, buckets - 1)
    kept_owner = np.minimum((kept.ts - ts[0]) * buckets // span, buckets - 1)
    for bucket in rng.choice(buckets, 50, replace=False):
        inside = values[owner == bucket]
        mine = kept.values[kept_owner == bucket]
        assert mine.min() == inside.min()
        assert mine.max() == inside.max()


def test_small_ranges_pass_through_and_gaps_stay_gaps() -> None:
    ts = np.array([0, 10, 20, 1000, 1010], dtype=np.int64)
    values = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    kept = decimate(ts, values, start=5, end=2000, buckets=10)
    assert kept.ts.tolist() == [10, 1000, 1010]  # outside the range and NaN dropped
    assert kept.values.tolist() == [2.0, 4.0, 5.0]
    many = np.arange(100, dtype=np.int64)
    flat = decimate(many, np.ones(100), start=0, end=99, buckets=10)
    assert len(flat.ts) == 10  # a flat bucket keeps one point: min and max are the same
