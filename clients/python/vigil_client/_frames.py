"""numpy and pandas in and out. Both are optional: imported only when a call needs them."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vigil_client.models import Points, ScoreResponse

MAX_CSV_ROWS = 100_000
"""Rows per request when a DataFrame is sent (the service takes 200,000 by default)."""


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "this needs numpy: pip install 'vigil-client[numpy]' (from clients/python)"
        ) from exc
    return numpy


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "this needs pandas: pip install 'vigil-client[pandas]' (from clients/python)"
        ) from exc
    return pandas


def _is_array(value: object) -> bool:
    return hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "dtype")


def _value(value: Any) -> float | None:
    """A value for a JSON body: None and NaN are a missing value (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def rows(values: Any) -> list[list[float | None]]:
    """Rows of values for a JSON body, from nested sequences or a 2-D array."""
    if _is_array(values):
        values = values.tolist()
    return [[_value(v) for v in row] for row in values]


def windows_json(windows: Any) -> list[Any]:
    """Windows (N, T, F) for a JSON body."""
    if _is_array(windows):
        result: list[Any] = windows.tolist()
        return result
    return [[list(step) for step in window] for window in windows]


def windows_binary(windows: Any) -> tuple[bytes, tuple[int, int, int]]:
    """The binary scoring body: little-endian float32, C order, and its shape N,T,F."""
    np = _numpy()
    array = np.ascontiguousarray(np.asarray(windows, dtype="<f4"))
    if array.ndim == 2:  # one window
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"windows must have shape (N, T, F) or (T, F), not {array.shape}")
    n, t, f = (int(d) for d in array.shape)
    return array.tobytes(order="C"), (n, t, f)


def frame_csv_chunks(frame: Any, *, rows_per_request: int = MAX_CSV_ROWS) -> Iterator[bytes]:
    """A DataFrame with a DatetimeIndex and one column per channel, as CSV bodies.

    The service maps the header's columns to its channels, in any order. A naive index is
    taken as UTC; an aware one is converted to UTC.
    """
    pd = _pandas()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex):
        raise TypeError(
            "the DataFrame's index must be a DatetimeIndex (the timestamps of the rows), "
            f"not {type(index).__name__}"
        )
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    stamps = index.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    columns = [str(c) for c in frame.columns]
    for low in range(0, len(frame), rows_per_request):
        chunk = frame.iloc[low : low + rows_per_request]
        out = io.StringIO()
        body = pd.DataFrame(chunk.to_numpy(dtype="float64"), columns=columns)
        body.insert(0, "timestamp", stamps[low : low + rows_per_request])
        body.to_csv(out, index=False, float_format="%.17g", lineterminator="\n")
        yield out.getvalue().encode()


def next_points(page: Points, page_size: int, start: Any) -> tuple[str | None, Any]:
    """(cursor, start) of the page after `page`, or (None, None) after the last one.

    A service from before cursor paging sends no `next_cursor`: a full page is then followed
    by the points after its last timestamp.
    """
    if page.next_cursor:
        return page.next_cursor, start
    if "next_cursor" in page.model_fields_set or len(page.timestamps) < page_size:
        return None, None
    last = page.timestamps[-1]
    return None, last + timedelta(microseconds=1)


def points_frame(pages: Sequence[Points], channels: Sequence[str]) -> Any:
    """Points as a DataFrame: a UTC DatetimeIndex named `timestamp`, a column per channel,
    NaN where a value is missing."""
    pd = _pandas()
    stamps = [t for page in pages for t in page.timestamps]
    values = [row for page in pages for row in page.values]
    index = pd.DatetimeIndex(stamps, name="timestamp")
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    frame = pd.DataFrame(values, index=index, columns=list(channels), dtype="float64")
    if len(frame) == 0:
        frame = pd.DataFrame(index=index, columns=list(channels), dtype="float64")
    return frame


def score_frame(response: ScoreResponse) -> Any:
    """Score results as a DataFrame: one row per window, contributions as `contribution.<ch>`."""
    pd = _pandas()
    records = []
    for result in response.results:
        record: dict[str, Any] = {
            "score_id": result.score_id,
            "start": result.start,
            "end": result.end,
            "raw_score": result.raw_score,
            "score": result.score,
            "adjusted_score": result.adjusted_score,
            "is_anomaly": result.is_anomaly,
            "p_false_positive": result.p_false_positive,
            "p_false_negative": result.p_false_negative,
            "data_quality": ",".join(f"{c.check}:{c.channel}" for c in result.data_quality),
        }
        for channel, share in result.channel_contributions.items():
            record[f"contribution.{channel}"] = share
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame.attrs.update(
        series_id=response.series_id,
        model_version=response.model_version,
        threshold=response.threshold,
    )
    return frame
