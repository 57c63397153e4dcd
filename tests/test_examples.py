"""examples/readings.csv is what the README's API tour posts after its two JSON points."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.schemas.common import to_us
from app.services.points import parse_csv_batch

ROOT = Path(__file__).resolve().parents[1]
TOUR_JSON_TIMESTAMPS = ["2026-11-22T08:00:00Z", 1795334401]


def test_the_tours_readings_follow_its_json_points_and_are_enough_to_train() -> None:
    batch = parse_csv_batch(
        (ROOT / "examples" / "readings.csv").read_bytes(),
        channels=["vibration", "temperature", "current"],
        max_rows=200_000,
    )
    first, second = (to_us(t) for t in TOUR_JSON_TIMESTAMPS)
    assert second - first == 1_000_000  # one second apart, in order
    assert batch.naive_timestamps == 0
    assert int(batch.ts[0]) > second and bool((np.diff(batch.ts) > 0).all())
    assert 2 + batch.received >= 128 + 7 * 64  # the 576 points the README says training needs
    # The README's label (08:10 to 08:20) covers stored points.
    start, end = to_us("2026-11-22T08:10:00Z"), to_us("2026-11-22T08:20:00Z")
    assert int(((batch.ts >= start) & (batch.ts <= end)).sum()) == 601
