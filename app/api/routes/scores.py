"""Scoring: windows in the body (JSON or binary), or a stored time range."""

from __future__ import annotations

import asyncio
import re
from itertools import chain
from typing import Any, Final

import numpy as np
import orjson
import simdjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import RuntimeDep, Scorer
from app.errors import InvalidInput, UnsupportedMediaType
from app.metrics import observe_many, series_metrics
from app.runtime import Principal, Runtime
from app.schemas.common import FEEDBACK_CLASSES, MAX_DB_ID, format_us
from app.schemas.scores import ScoreRangeRequest, ScoreResponse, ScoreWindowsRequest
from app.scorelog import Record
from app.scoring import ActiveModel, SeriesInfo, serving_samples
from app.services.points import gc_paused
from app.services.windows import load_range_windows, parse_instant
from models import ScoreBatch
from models.quality import describe

router = APIRouter(prefix="/v1", tags=["scores"])

BINARY_TYPES = ("application/octet-stream",)
SHAPE_PATTERN: Final = "^[0-9]{1,9},[0-9]{1,9},[0-9]{1,9}$"
SHAPE_HEADER: Final = re.compile(SHAPE_PATTERN.strip("^$"))
BINARY_HEADERS = ("X-Vigil-Series-Id", "X-Vigil-Shape")
"""The headers that describe a binary body."""

_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    ScoreWindowsRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ),
                    ScoreRangeRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ),
                ]
            }
        },
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": (
                "Little-endian float32 windows, C order. Headers: `X-Vigil-Series-Id` and "
                "`X-Vigil-Shape: N,T,F`."
            ),
        },
    },
}


_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "detail",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["steps"]},
        "description": "`steps`: also return each window's per-step contributions.",
    },
    {
        "name": "X-Vigil-Series-Id",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DB_ID},
        "description": "With a binary body (required then): the series whose model scores it.",
    },
    {
        "name": "X-Vigil-Shape",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": SHAPE_PATTERN},
        "description": "With a binary body (required then): `N,T,F`, windows × steps × channels.",
    },
]


@router.post(
    "/score",
    summary="Score windows with the series' active model",
    description=(
        'Send windows (`{"series_id", "windows"}`, or a binary body for high rates), or '
        '`{"series_id", "start", "end"}` to score the stored windows in that range. '
        "Each scored window is kept for the score retention period so that operators can "
        "point feedback at its `score_id`. 409 while the series has no trained model."
    ),
    response_model=ScoreResponse,
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": _PARAMETERS},
    responses={409: {"description": "The series has no trained model yet"}},
)
async def score(request: Request, runtime: RuntimeDep, key: Scorer) -> Response:
    # NOTE: `app.api.score_endpoint` serves POST /v1/score ahead of FastAPI's routing with this
    # same `score_body`; this route documents the operation, answers its other methods
    # (405), and serves it wherever the app runs without that endpoint.
    body = await request.body()
    headers = request.headers
    content = await score_body(
        runtime,
        body=body,
        content_type=headers.get("content-type", ""),
        series_id_header=headers.get("x-vigil-series-id", ""),
        shape_header=headers.get("x-vigil-shape", ""),
        steps=detail_steps(request.query_params.get("detail")),
        principal=key,
    )
    return Response(content, media_type="application/json")


def detail_steps(value: str | None) -> bool:
    """`?detail=steps` asks for per-step contributions; no other value is defined."""
    if value is None:
        return False
    if value != "steps":
        shown = value if len(value) <= 20 else value[:17] + "..."
        raise InvalidInput(f"must be `steps` (or absent), not {shown!r}", field="detail")
    return True


async def score_body(
    runtime: Runtime,
    *,
    body: bytes,
    content_type: str,
    series_id_header: str,
    shape_header: str,
    steps: bool,
    principal: Principal,
) -> bytes:
    """The JSON answer to one scoring request, from its body and the headers that describe it,
    for `principal` (who may be restricted to certain series)."""
    content_type = content_type.split(";")[0].strip().lower()
    if content_type in BINARY_TYPES:
        series_id, windows = _parse_binary(
            body, series_id_header, shape_header, runtime.settings.max_score_windows
        )
        principal.require_series(series_id)
        info = await _series(runtime, series_id)
        _check_shape(windows, info)
        return await _score(runtime, info, windows, None, steps)
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not supported; send application/json or "
            "application/octet-stream"
        )
    limit = runtime.settings.max_score_windows
    posted: np.ndarray | None = None
    with gc_paused():  # irregular windows decode to Python lists (200,000 floats for 256)
        payload = _parse_json(body)
        _check_members(payload)
        series_id = _series_id(payload.get("series_id"))
        principal.require_series(series_id)
        # Every `[` of the body opens the windows, a window or a step once the members are
        # checked (their names hold none): more means a cell that is an array.
        arrays = _count_arrays(body) if "windows" in payload else 0
        cached = runtime.registry.cached_series(series_id)
        if cached is not None and "windows" in payload:
            # Converted and freed while the collector is paused, so it never walks the lists.
            posted = _windows_from_json(payload.pop("windows"), cached, limit, arrays)
    info = cached or await _series(runtime, series_id)
    if posted is None and "windows" in payload:
        posted = _windows_from_json(payload.pop("windows"), info, limit, arrays)
    if posted is not None:
        return await _score(runtime, info, posted, None, steps)
    if "start" in payload or "end" in payload:
        start = parse_instant(payload.get("start"), field="start")
        end = parse_instant(payload.get("end"), field="end")
        if end < start:
            raise InvalidInput("must not be before start", field="end")
        windows, spans = await asyncio.to_thread(
            load_range_windows,
            sessions=runtime.sessions,
            series=info,
            start=start,
            end=end,
            max_windows=runtime.settings.max_score_windows,
        )
        return await _score(runtime, info, windows, spans, steps)
    raise InvalidInput("send either `windows` or `start` and `end`", field="windows")


async def _series(runtime: Runtime, series_id: int) -> SeriesInfo:
    cached = runtime.registry.cached_series(series_id)
    if cached is not None:
        return cached
    return await asyncio.to_thread(runtime.registry.load_series, series_id)


async def _active(runtime: Runtime, info: SeriesInfo) -> ActiveModel:
    if runtime.keys.generation > runtime.registry.generation:
        await runtime.registry.catch_up(runtime.keys.generation)
    cached = runtime.registry.cached_active(info.id)
    if cached is not None:
        return cached
    return await asyncio.to_thread(runtime.registry.load_active, info)


async def _score(
    runtime: Runtime,
    info: SeriesInfo,
    windows: np.ndarray,
    spans: list[tuple[int, int]] | None,
    steps: bool,
) -> bytes:
    active = await _active(runtime, info)
    # The raw score depends on L, so the threshold comes from the calibration at that L.
    threshold = active.model.threshold(
        info.threshold_quantile,
        n_samples=serving_samples(active.model, runtime.settings.score_samples),
    )
    scored = await runtime.batcher.score(
        (info.id, active.version), active.model, windows, Record(threshold, spans)
    )
    batch, ids, flagged = scored.batch, scored.ids, scored.flagged
    adjusted = batch.adjusted_score.tolist()
    counters = series_metrics(info.name)
    counters.windows_scored.inc(len(flagged))
    if any(flagged):
        counters.anomalies_flagged.inc(sum(flagged))
    observe_many(counters.adjusted_score, batch.adjusted_score)
    body = {
        "series_id": info.id,
        "model_version": active.version,
        "threshold": threshold,
        "results": _results(info, active, batch, adjusted, flagged, ids, spans, steps),
    }
    return orjson.dumps(body)


def _results(
    info: SeriesInfo,
    active: ActiveModel,
    batch: ScoreBatch,
    adjusted: list[float],
    flagged: list[bool],
    ids: list[Any],
    spans: list[tuple[int, int]] | None,
    steps: bool,
) -> list[dict[str, Any]]:
    # Only classes the model saw labels for: an untrained row of pi says nothing. The series'
    # own classes form one distribution (renormalised over them); the feedback classes are
    # not kinds of window but verdicts on alarms, so they are reported apart.
    model = active.model
    trained = [i for i, count in enumerate(model.label_counts) if count > 0]
    own = [i for i in trained if model.classes[i].name not in FEEDBACK_CLASSES]
    verdicts = [i for i in trained if model.classes[i].name in FEEDBACK_CLASSES]
    classes = [model.classes[i].name for i in own]
    verdict_names = [model.classes[i].name for i in verdicts]
    channels = info.channels
    raw = batch.raw_score.tolist()
    calibrated = batch.score.tolist()
    p_fp = batch.p_false_positive.tolist()
    p_fn = batch.p_false_negative.tolist()
    own_probs = batch.class_probabilities[:, own]
    totals = own_probs.sum(axis=1, keepdims=True)
    probabilities = np.divide(
        own_probs, totals, out=np.zeros_like(own_probs), where=totals > 0
    ).tolist()
    verdict_probs = batch.class_probabilities[:, verdicts].tolist()
    contributions = batch.channel_contributions.tolist()
    step_values = batch.step_contributions.tolist() if steps else None
    checks = describe(batch.quality, info.channels)
    results = []
    for i in range(len(raw)):
        result: dict[str, Any] = {
            "score_id": str(ids[i]),
            "raw_score": raw[i],
            "score": calibrated[i],
            "p_false_positive": p_fp[i],
            "p_false_negative": p_fn[i],
            "adjusted_score": adjusted[i],
            "is_anomaly": flagged[i],
            "class_probabilities": dict(zip(classes, probabilities[i], strict=True)),
            "feedback_probabilities": dict(zip(verdict_names, verdict_probs[i], strict=True)),
            "channel_contributions": dict(zip(channels, contributions[i], strict=True)),
            "data_quality": checks[i],
        }
        if step_values is not None:
            result["step_contributions"] = step_values[i]
        if spans is not None:
            result["start"] = _iso(spans[i][0])
            result["end"] = _iso(spans[i][1])
        results.append(result)
    return results


def _iso(micros: int) -> str:
    return format_us(micros)


# -- parsing -------------------------------------------------------------------------------


def _parse_json(body: bytes) -> dict[str, Any]:
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


def _count_arrays(body: bytes) -> int:
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
RANGE_MEMBERS: Final = frozenset({"series_id", "start", "end"})


def _check_members(payload: dict[str, Any]) -> None:
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


def _series_id(value: Any, field: str = "series_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("is required and must be an integer", field=field)
    if not 1 <= value <= MAX_DB_ID:
        raise InvalidInput(f"must be a series id from 1 to {MAX_DB_ID}", field=field)
    return value


def _windows_from_json(value: Any, info: SeriesInfo, limit: int, arrays: int) -> np.ndarray:
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
    _check_shape(windows, info)
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
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by _check_shape
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


def _check_shape(windows: np.ndarray, info: SeriesInfo) -> None:
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


def _parse_binary(
    body: bytes, series_id_header: str, shape_header: str, max_windows: int
) -> tuple[int, np.ndarray]:
    raw_id = series_id_header
    if not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > 10:
        raise InvalidInput(
            "header X-Vigil-Series-Id must be the series id", field="X-Vigil-Series-Id"
        )
    series_id = _series_id(int(raw_id), field="X-Vigil-Series-Id")
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
