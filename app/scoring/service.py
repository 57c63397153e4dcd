"""Scoring one request: the series, its active model, the micro-batcher, and the answer.

Shared by the FastAPI route (`app/api/routes/scores.py`) and the fast path ahead of routing
(`app/api/score_endpoint.py`)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from app.errors import InvalidInput, UnsupportedMediaType
from app.metrics import observe_many, series_metrics
from app.runtime import Principal, Runtime
from app.schemas.common import FEEDBACK_CLASSES, format_us
from app.schemas.score_codecs import (
    BINARY_TYPES,
    check_members,
    check_shape,
    count_arrays,
    parse_binary,
    parse_json,
    parse_series_id,
    windows_from_json,
)
from app.scoring.log import Record
from app.scoring.registry import ActiveModel, SeriesInfo, serving_samples
from app.services.points import gc_paused
from app.services.windows import load_range_windows, parse_instant, prepare_for_scoring
from app.training.pipeline import recorded_interval
from models import ScoreBatch
from models.quality import describe

MISSING_DATA = "missing_data"
"""The data-quality check of a window not scored: more than VIGIL_MAX_MISSING_FRACTION of
its values are missing."""


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
        series_id, windows = parse_binary(
            body, series_id_header, shape_header, runtime.settings.max_score_windows
        )
        principal.require_series(series_id)
        info = await _series(runtime, series_id)
        check_shape(windows, info)
        return await _score(runtime, info, windows, None, steps)
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not supported; send application/json or "
            "application/octet-stream"
        )
    limit = runtime.settings.max_score_windows
    posted: np.ndarray | None = None
    with gc_paused():  # irregular windows decode to Python lists (200,000 floats for 256)
        payload = parse_json(body)
        check_members(payload)
        series_id = parse_series_id(payload.get("series_id"))
        principal.require_series(series_id)
        # Every `[` of the body opens the windows, a window or a step once the members are
        # checked (their names hold none): more means a cell that is an array.
        arrays = count_arrays(body) if "windows" in payload else 0
        cached = runtime.registry.cached_series(series_id)
        if cached is not None and "windows" in payload:
            # Converted and freed while the collector is paused, so it never walks the lists.
            posted = windows_from_json(payload.pop("windows"), cached, limit, arrays)
    info = cached or await _series(runtime, series_id)
    if posted is None and "windows" in payload:
        posted = windows_from_json(payload.pop("windows"), info, limit, arrays)
    if posted is not None:
        return await _score(runtime, info, posted, None, steps)
    if "start" in payload or "end" in payload:
        start = parse_instant(payload.get("start"), field="start")
        end = parse_instant(payload.get("end"), field="end")
        if end < start:
            raise InvalidInput("must not be before start", field="end")
        cursor = payload.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidInput(
                "must be a string: `next_cursor` of the previous page", field="cursor"
            )
        active = await _active(runtime, info)
        page = await asyncio.to_thread(
            load_range_windows,
            sessions=runtime.sessions,
            series=info,
            start=start,
            end=end,
            max_windows=runtime.settings.max_score_windows,
            gap_factor=runtime.settings.max_gap_factor,
            interval_us=recorded_interval(active.model),
            cursor=cursor,
        )
        return await _score(runtime, info, page.windows, page.spans, steps, page.next_cursor)
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
    next_cursor: str | None = None,
) -> bytes:
    limit = runtime.settings.max_step_detail
    if steps and windows.shape[0] * windows.shape[1] > limit:
        raise InvalidInput(
            f"per-step detail covers at most {limit} window steps per request "
            f"(VIGIL_MAX_STEP_DETAIL); these {windows.shape[0]} windows of "
            f"{windows.shape[1]} steps hold {windows.shape[0] * windows.shape[1]}: send fewer "
            "windows or a shorter range, or leave out ?detail=steps",
            field="detail",
        )
    active = await _active(runtime, info)
    # The raw score depends on L, so the threshold comes from the calibration at that L.
    threshold = active.model.threshold(
        info.threshold_quantile,
        n_samples=serving_samples(active.model, runtime.settings.score_samples),
    )
    # Missing values (stored ranges only): windows with too many are not scored; the others
    # are imputed (models.data.impute_missing) exactly as training imputed its windows.
    ready = prepare_for_scoring(
        windows,
        fill=active.model.normalisation.mean,
        max_missing=runtime.settings.max_missing_fraction,
    )
    chosen, scored, missing = ready.windows, ready.scored, ready.missing
    results: list[dict[str, Any]] = []
    if scored.any():
        chosen_spans = spans if spans is None or scored.all() else _kept(spans, scored)
        outcome = await runtime.batcher.score(
            (info.id, active.version), active.model, chosen, Record(threshold, chosen_spans)
        )
        batch, ids, flagged = outcome.batch, outcome.ids, outcome.flagged
        adjusted = batch.adjusted_score.tolist()
        counters = series_metrics(info.name)
        counters.windows_scored.inc(len(flagged))
        if any(flagged):
            counters.anomalies_flagged.inc(sum(flagged))
        observe_many(counters.adjusted_score, batch.adjusted_score)
        results = _results(info, active, batch, adjusted, flagged, ids, chosen_spans, steps)
    body = {
        "series_id": info.id,
        "model_version": active.version,
        "threshold": threshold,
        "results": _merge(results, windows, scored, missing, spans, info.channels),
        "next_cursor": next_cursor,
    }
    return orjson.dumps(body)


def _kept(spans: list[tuple[int, int]], keep: np.ndarray) -> list[tuple[int, int]]:
    return [span for span, kept in zip(spans, keep.tolist(), strict=True) if kept]


def _merge(
    results: list[dict[str, Any]],
    windows: np.ndarray,
    scored: np.ndarray,
    missing: np.ndarray,
    spans: list[tuple[int, int]] | None,
    channels: tuple[str, ...],
) -> list[dict[str, Any]]:
    """Every window in order: the scored ones' results, and for each window with too much
    missing data a result that says it was not scored (never a score that looks normal)."""
    fractions = missing.tolist()
    if bool(scored.all()):
        for result, fraction in zip(results, fractions, strict=True):
            result["scored"] = True
            result["missing_fraction"] = fraction
        return results
    out: list[dict[str, Any]] = []
    scored_results = iter(results)
    for i, is_scored in enumerate(scored.tolist()):
        if is_scored:
            result = next(scored_results)
            result["scored"] = True
            result["missing_fraction"] = fractions[i]
            out.append(result)
            continue
        absent = np.isnan(windows[i]).any(axis=0).tolist()  # (F,) channels with gaps
        result = {
            "score_id": None,
            "raw_score": None,
            "score": None,
            "p_false_positive": None,
            "p_false_negative": None,
            "adjusted_score": None,
            "is_anomaly": False,
            "scored": False,
            "missing_fraction": fractions[i],
            "class_probabilities": {},
            "feedback_probabilities": {},
            "channel_contributions": {},
            "data_quality": [
                {"check": MISSING_DATA, "channel": name}
                for name, gone in zip(channels, absent, strict=True)
                if gone
            ],
        }
        if spans is not None:
            result["start"] = _iso(spans[i][0])
            result["end"] = _iso(spans[i][1])
        out.append(result)
    return out


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
