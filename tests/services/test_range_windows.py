"""Paging a stored range's windows: every window once, whatever the page size, the stride,
and where the gaps fall against the page boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.errors import InvalidInput
from app.scoring.registry import SeriesInfo
from app.services.windows import load_range_windows
from app.training.pipeline import cut_windows
from tests.utils.stream import STEP_US, T0_US, create_series, insert_points, make_stream


def info(series_id: int, window_size: int, stride: int) -> SeriesInfo:
    return SeriesInfo(
        id=series_id,
        name="pump-1",
        channels=("c0", "c1", "c2"),
        window_size=window_size,
        stride=stride,
        classes={},
        threshold_quantile=0.99,
    )


@pytest.mark.parametrize(("window_size", "stride"), [(8, 1), (8, 5), (8, 8)])
@pytest.mark.parametrize("max_windows", [1, 3, 7])
def test_pages_give_every_window_once(
    sessions: sessionmaker[Session], window_size: int, stride: int, max_windows: int
) -> None:
    series_id = create_series(sessions, window_size=window_size, stride=stride)
    stream = make_stream(150)
    # Pauses of various lengths, some shorter than a window's worth of points between them.
    for at, pause in ((37, 60), (41, 10), (90, 1000), (91, 5)):
        stream.ts[at:] += pause * STEP_US
    insert_points(sessions, series_id, stream)
    series = info(series_id, window_size, stride)
    spans: list[tuple[int, int]] = []
    cursor: str | None = None
    for _ in range(1000):
        page = load_range_windows(
            sessions=sessions,
            series=series,
            start=T0_US,
            end=T0_US + 10**12,
            max_windows=max_windows,
            gap_factor=3.0,
            cursor=cursor,
        )
        assert len(page.spans) <= max_windows
        assert page.windows.shape == (len(page.spans), window_size, 3)
        spans.extend(page.spans)
        cursor = page.next_cursor
        if cursor is None:
            break
    starts = cut_windows(stream.ts, window_size=window_size, stride=stride, max_gap_us=3 * STEP_US)
    expected = [(int(stream.ts[s]), int(stream.ts[s + window_size - 1])) for s in starts]
    assert spans == expected
    assert all(end - start == (window_size - 1) * STEP_US for start, end in spans)


def test_a_range_without_a_gap_free_window_is_422(sessions: sessionmaker[Session]) -> None:
    series_id = create_series(sessions, window_size=8, stride=4)
    stream = make_stream(20)
    stream.ts = T0_US + np.arange(20, dtype=np.int64) * 10 * STEP_US
    stream.ts[::2] += STEP_US  # intervals alternate 11 s and 9 s...
    for at in (5, 10, 15):  # ...with pauses that leave no run of 8 points
        stream.ts[at:] += 600 * STEP_US
    insert_points(sessions, series_id, stream)
    with pytest.raises(InvalidInput) as caught:
        load_range_windows(
            sessions=sessions,
            series=info(series_id, 8, 4),
            start=T0_US,
            end=T0_US + 10**12,
            max_windows=10,
            gap_factor=3.0,
        )
    assert caught.value.field == "start"
    assert "gap" in str(caught.value)
