"""Min-max decimation: at most two points per pixel column, so that a chart of 10^6 points
draws (and travels) as fast as one of a few thousand, and still shows every spike.

Each of `buckets` equal slices of [start, end] keeps its lowest and its highest value, in time
order; a bucket with one point keeps it once, an empty bucket keeps nothing (a gap stays a
gap). Channels are decimated independently: each keeps its own extremes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class Decimated:
    """One channel's kept points: `ts` (microseconds) and `values`, both (M,), M <= 2 × buckets."""

    ts: IntArray
    values: FloatArray


def decimate(ts: IntArray, values: FloatArray, *, start: int, end: int, buckets: int) -> Decimated:
    """The min and max of `values` (N,) in each of `buckets` slices of [start, end].

    `ts` (N,) is sorted; points outside [start, end] are ignored. NaN values are skipped.
    """
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    inside = (ts >= start) & (ts <= end) & ~np.isnan(values)
    ts, values = ts[inside], values[inside]
    if len(ts) <= 2 * buckets:
        return Decimated(ts.astype(np.int64), values.astype(np.float64))
    span = max(end - start, 1)
    bucket = np.minimum((ts - start) * buckets // span, buckets - 1)
    # Bucket boundaries in the sorted arrays, then each bucket's argmin and argmax.
    edges = np.flatnonzero(np.diff(bucket)) + 1
    starts = np.concatenate(([0], edges))
    order_min = np.minimum.reduceat(values, starts)
    order_max = np.maximum.reduceat(values, starts)
    # Position of the first min and the first max inside each bucket.
    owner = np.repeat(np.arange(len(starts)), np.diff(np.concatenate((starts, [len(ts)]))))
    is_min = values == order_min[owner]
    is_max = values == order_max[owner]
    first_min = _first_per_bucket(is_min, owner, len(starts))
    first_max = _first_per_bucket(is_max, owner, len(starts))
    keep = np.unique(np.concatenate((first_min, first_max)))  # sorted: time order
    return Decimated(ts[keep].astype(np.int64), values[keep].astype(np.float64))


def _first_per_bucket(mask: np.ndarray[Any, Any], owner: IntArray, n: int) -> IntArray:
    """Index of the first True of `mask` within each of the `n` buckets named by `owner`."""
    index = np.flatnonzero(mask)
    firsts = np.full(n, -1, dtype=np.int64)
    # Reversed assignment: the earliest index of each bucket is written last and wins.
    firsts[owner[index][::-1]] = index[::-1]
    return firsts[firsts >= 0]
