"""The bodies of POST /v1/score: JSON windows, binary windows, and the `detail` query.

Parsed here, beside the schemas, so that the route and `app/scoring/service.py` see numpy
arrays and ids only."""

from __future__ import annotations

import re
from itertools import chain
from typing import Any, Final

import numpy as np
import orjson
import simdjson

from app.errors import InvalidInput
from app.schemas.common import MAX_DB_ID
from app.scoring.registry import SeriesInfo

BINARY_TYPES = ("application/octet-stream",)
SHAPE_PATTERN: Final = "^[0-9]{1,9},[0-9]{1,9},[0-9]{1,9}$"
SHAPE_HEADER: Final = re.compile(SHAPE_PATTERN.strip("^$"))
BINARY_HEADERS = ("X-Vigil-Series-Id", "X-Vigil-Shape")
"""The headers that describe a binary body."""


def detail_steps(value: str | None) -> bool:
    """`?detail=steps` asks for per-step contributions; no other value is defined."""
    if value is None:
        return False
    if value != "steps":
        shown = value if len(value) <= 20 else value[:17] + "..."
        raise InvalidInput(f"must be `steps` (or absent), not {shown!r}", field="detail")
    return True


def parse_json(body: bytes) -> dict[str, Any]:
    """The body's members, as Python values, except `windows` when it is an array: that stays
    in simdjson's parsed document, from which `_regular_windows` copies the numbers straight
    into numpy. orjson would first make a Python float of each (and the conversion then reads
    them all again): 84 against 44 µs for one window, 21–32 against 8 ms for 256. Any body
    simdjson does not take as it is (invalid JSON, an integer beyond 64 bits, a key given
    twice) is parsed by orjson instead, so answers and errors stay orjson's.
    """
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        document = simdjson.Parser().parse(body)
        if isinstance(document, simdjson.Object):
            keys = list(document.keys())
            payload = {key: _member(document[key], key) for key in keys}
            if len(payload) == len(keys):
                return payload
    except (ValueError, RuntimeError):
        pass
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("the body must be a JSON object")
    return parsed


def count_arrays(body: bytes) -> int:
    """The number of `[` in the body. NOTE: numpy's vectorised compare takes 0.4 ms for 256
    windows of 128 × 6 (3.9 MB), bytes.count 1.7 ms; 7 against 12 µs for one window."""
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == ord("[")))


def _member(value: Any, key: str) -> Any:
    if isinstance(value, simdjson.Array):
        return value if key == "windows" else value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


WINDOWS_MEMBERS: Final = frozenset({"series_id", "windows"})
RANGE_MEMBERS: Final = frozenset({"series_id", "start", "end", "cursor"})


def check_members(payload: dict[str, Any]) -> None:
    """The body is ScoreWindowsRequest or ScoreRangeRequest, exactly: no other member, and
    never both `windows` and a range."""
    if payload.keys() <= WINDOWS_MEMBERS or payload.keys() <= RANGE_MEMBERS:
        return
    unknown = sorted(payload.keys() - WINDOWS_MEMBERS - RANGE_MEMBERS)
    if unknown:
        shown = unknown[0] if len(unknown[0]) <= 40 else unknown[0][:37] + "..."
        raise InvalidInput(
            "is not a member of a scoring request: send series_id with either windows, or "
            "start and end",
            field=shown,
        )
    raise InvalidInput(
        "send either windows or start and end, not both",
        field="start" if "start" in payload else "end",
    )


def parse_series_id(value: Any, field: str = "series_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("is required and must be an integer", field=field)
    if not 1 <= value <= MAX_DB_ID:
        raise InvalidInput(f"must be a series id from 1 to {MAX_DB_ID}", field=field)
    return value


def windows_from_json(value: Any, info: SeriesInfo, limit: int, arrays: int) -> np.ndarray:
    """`arrays`: how many JSON arrays the body holds (see `_regular_windows`)."""
    if not isinstance(value, list | simdjson.Array) or not len(value):
        raise InvalidInput("must be a non-empty list of windows", field="windows")
    if len(value) > limit:
        raise InvalidInput(
            f"holds {len(value)} windows; at most {limit} per request", field="windows"
        )
    windows = _regular_windows(value, info.window_size, len(info.channels), arrays)
    if windows is None and isinstance(value, simdjson.Array):
        value = value.as_list()  # irregular or not all numbers: find out what, in Python
    if windows is None:  # irregular or not plain numbers: numpy's way, errors named below
        _check_cells(value)  # numpy would take "1", true and [1] for 1.0
        try:
            windows = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
            _explain_bad_windows(value, info)
            raise InvalidInput(
                "must be numbers shaped windows × steps × channels", field="windows"
            ) from None
    check_shape(windows, info)
    return windows


def _regular_windows(
    value: list[Any] | simdjson.Array, t: int, f: int, arrays: int | None = None
) -> np.ndarray | None:
    """The windows as float32 when every one is `t` lists of `f` numbers, else None.

    From a simdjson array: its shape checked array by array (as_buffer alone would flatten
    any nesting), its cells checked to be no arrays by counting the body's arrays (`arrays`:
    one for the windows, one per window and one per step when none is nested deeper), then
    its numbers copied out in one call, as float64 (simdjson's only float type; rounded to
    float32 as numpy rounds a Python float). From lists: one flat pass over the values, a
    quarter faster for 256 windows than `np.asarray` on the nested lists.
    """
    if isinstance(value, simdjson.Array):
        if arrays != 1 + len(value) * (1 + t):
            return None  # a cell is an array (or the count is unknown)
        for window in value:
            if not isinstance(window, simdjson.Array) or len(window) != t:
                return None
            for step in window:
                if not isinstance(step, simdjson.Array) or len(step) != f:
                    return None
        try:
            flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
        except (TypeError, ValueError, RuntimeError):  # a value that is not a number
            return None
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by check_shape
            return flat.astype(np.float32).reshape(len(value), t, f)
    if set(map(type, value)) != {list} or set(map(len, value)) != {t}:
        return None
    steps = list(chain.from_iterable(value))
    if set(map(type, steps)) != {list} or set(map(len, steps)) != {f}:
        return None
    if not set(map(type, chain.from_iterable(steps))) <= {int, float}:
        return None  # np.fromiter would take True and "1" for 1.0
    try:
        flat = np.fromiter(chain.from_iterable(steps), dtype=np.float32, count=len(value) * t * f)
    except (ValueError, TypeError, OverflowError):
        return None
    return flat.reshape(len(value), t, f)


def check_shape(windows: np.ndarray, info: SeriesInfo) -> None:
    t, f = info.window_size, len(info.channels)
    if windows.ndim != 3 or windows.shape[1:] != (t, f):
        raise InvalidInput(
            f"must have shape (N, {t}, {f}) for series {info.name!r} "
            f"({t} time steps × channels {list(info.channels)}); got {tuple(windows.shape)}",
            field="windows",
        )
    if not np.isfinite(windows).all():  # one pass; finding the window is for errors only
        finite = np.isfinite(windows).all(axis=(1, 2))
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidInput("contains NaN or an infinite value", field=f"windows.{bad}")


def _check_cells(value: list[Any]) -> None:
    """Name the first cell that is not a JSON number, wherever the windows' shape allows one
    (slow path, before numpy converts anything: it would read "1", true and [1] as 1.0)."""
    for i, window in enumerate(value):
        if not isinstance(window, list):
            continue
        for j, step in enumerate(window):
            if not isinstance(step, list):
                continue
            for k, x in enumerate(step):
                if isinstance(x, bool) or not isinstance(x, int | float):
                    raise InvalidInput(
                        f"must be a number; got {_json_kind(x)}", field=f"windows.{i}.{j}.{k}"
                    )


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _explain_bad_windows(value: list[Any], info: SeriesInfo) -> None:
    """Find the first misshapen or non-numeric entry and name it (slow path, errors only)."""
    t, f = info.window_size, len(info.channels)
    for i, window in enumerate(value):
        if not isinstance(window, list) or len(window) != t:
            size = len(window) if isinstance(window, list) else type(window).__name__
            raise InvalidInput(
                f"must be a list of {t} time steps; got {size}", field=f"windows.{i}"
            )
        for j, step in enumerate(window):
            if not isinstance(step, list) or len(step) != f:
                size = len(step) if isinstance(step, list) else type(step).__name__
                raise InvalidInput(
                    f"must hold {f} values (channels {list(info.channels)}); got {size}",
                    field=f"windows.{i}.{j}",
                )
            for k, x in enumerate(step):
                if isinstance(x, bool) or not isinstance(x, int | float):
                    raise InvalidInput(
                        f"must be a number; got {type(x).__name__}",
                        field=f"windows.{i}.{j}.{k}",
                    )
                if isinstance(x, int) and abs(x) > 3.4e38:
                    raise InvalidInput("is out of float32 range", field=f"windows.{i}.{j}.{k}")


def parse_binary(
    body: bytes, series_id_header: str, shape_header: str, max_windows: int
) -> tuple[int, np.ndarray]:
    raw_id = series_id_header
    if not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > 10:
        raise InvalidInput(
            "header X-Vigil-Series-Id must be the series id", field="X-Vigil-Series-Id"
        )
    series_id = parse_series_id(int(raw_id), field="X-Vigil-Series-Id")
    # NOTE: int() would also take "+1", " 1", "1_0" and non-ASCII digits; the header is
    # exactly what openapi.json's pattern says.
    if SHAPE_HEADER.fullmatch(shape_header) is None:
        shape: tuple[int, ...] = ()
    else:
        shape = tuple(int(part) for part in shape_header.split(","))
    if len(shape) != 3 or min(shape) <= 0:
        raise InvalidInput(
            "header must be `N,T,F` (three positive integers)", field="X-Vigil-Shape"
        )
    if shape[0] > max_windows:
        raise InvalidInput(
            f"holds {shape[0]} windows; at most {max_windows} per request",
            field="X-Vigil-Shape",
        )
    expected = shape[0] * shape[1] * shape[2] * 4
    if len(body) != expected:
        raise InvalidInput(
            f"body has {len(body)} bytes; shape {shape} of float32 needs {expected}",
            field="body",
        )
    windows = np.frombuffer(body, dtype="<f4").reshape(shape)
    return series_id, windows
