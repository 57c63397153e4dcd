"""The pure helpers of benchmarks/detection (nothing here is timed)."""

from __future__ import annotations

import orjson

from benchmarks.detection.common import (
    CHANNELS,
    HZ,
    STRIDE,
    T0_US,
    batch_body,
    batch_span_us,
    iso,
    parse_us,
    percentile,
)


def test_iso_and_parse_round_trip_to_the_microsecond() -> None:
    for us in (T0_US, T0_US + 100_000, T0_US + 123_456_789):
        assert parse_us(iso(us)) == us
    assert iso(T0_US) == "2026-01-01T00:00:00.000000Z"
    assert parse_us("2026-01-01T00:00:00.5Z") == T0_US + 500_000


def test_a_batch_is_one_second_of_ten_hertz_points_that_completes_one_window() -> None:
    body = orjson.loads(batch_body(600, HZ, seed=3))
    assert len(body["timestamps"]) == HZ and all(len(v) == len(CHANNELS) for v in body["values"])
    first, last = batch_span_us(600, HZ)
    assert [parse_us(t) for t in body["timestamps"]] == [first + k * 100_000 for k in range(HZ)]
    assert last - first == 900_000 and STRIDE == HZ
    # The same points are the same bytes (re-sends are unchanged), other seeds differ.
    assert batch_body(600, HZ, seed=3) == batch_body(600, HZ, seed=3)
    assert batch_body(600, HZ, seed=4) != batch_body(600, HZ, seed=3)


def test_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile(list(map(float, range(101))), 99) == 99.0
    assert percentile([], 50) != percentile([], 50)  # nan
