"""What operators' feedback changed: the windows they marked, scored by the version before
and the version now active, and the false alarms they reported per day under each version."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import MODEL_ACTIVE, Label, ModelVersion, Point, ScoreRecord, Series
from app.scoring.registry import load_artifact, serving_samples
from app.training.pipeline import cut_windows, gather
from models import TrainedModel

MICROS = 1_000_000
MAX_MARKED = 60
"""Marked ranges shown (newest first); each is scored by two versions."""
MAX_WINDOWS_PER_MARK = 16

_models: OrderedDict[str, TrainedModel] = OrderedDict()
_models_lock = threading.Lock()


def _model(row: ModelVersion) -> TrainedModel:
    """The version's model, from a small cache keyed by the artifact's hash."""
    with _models_lock:
        cached = _models.get(row.sha256)
        if cached is not None:
            _models.move_to_end(row.sha256)
            return cached
    model = load_artifact(row.artifact, row.sha256, what=f"series {row.series_id} v{row.version}")
    with _models_lock:
        _models[row.sha256] = model
        while len(_models) > 8:
            _models.popitem(last=False)
    return model


@dataclass
class MarkedWindow:
    label_id: int
    label: str
    start: datetime
    end: datetime
    windows: int
    previous: float | None
    current: float | None
    previous_ratio: float | None
    """The previous version's score over its own threshold (each version has its scale)."""
    current_ratio: float | None
    wanted: str
    """`down` for a mark that says the window is normal (a false alarm), `up` for a fault."""

    @property
    def change(self) -> float | None:
        if self.previous is None or self.current is None:
            return None
        return self.current - self.previous

    @property
    def verdict(self) -> str:
        """`better` when the score moved the way the mark asks relative to each version's
        threshold, `worse` the other way."""
        if self.previous_ratio is None or self.current_ratio is None:
            return ""
        change = self.current_ratio - self.previous_ratio
        if change == 0:
            return ""
        return "better" if (change < 0) == (self.wanted == "down") else "worse"


@dataclass
class FeedbackView:
    previous: ModelVersion | None
    current: ModelVersion | None
    previous_threshold: float | None
    current_threshold: float | None
    marked: list[MarkedWindow]
    per_day: list[dict[str, Any]]
    per_version: list[dict[str, Any]]


def _threshold(row: ModelVersion | None) -> float | None:
    if row is None:
        return None
    value = (row.metrics or {}).get("threshold")
    return float(value) if isinstance(value, int | float) else None


def _ratio(score: float | None, threshold: float | None) -> float | None:
    if score is None or threshold is None or threshold <= 0:
        return None
    return score / threshold


def _windows_of(session: Session, series: Series, label: Label) -> np.ndarray:
    """The windows a label covers (N, T, F) float32: the scored window itself for feedback on a
    score, else the series' windows inside the range (or the one starting at it, if shorter)."""
    t, f = series.window_size, len(series.channels)
    if label.score_id is not None:
        blob = session.scalar(select(ScoreRecord.window).where(ScoreRecord.id == label.score_id))
        if blob is not None:
            return np.frombuffer(blob, dtype="<f4").reshape(1, t, f)
    if label.start_ts is None or label.end_ts is None:
        return np.empty((0, t, f), np.float32)
    rows = session.execute(
        select(Point.ts, Point.values)
        .where(
            Point.series_id == series.id,
            Point.ts >= label.start_ts,
            Point.ts <= label.end_ts,
        )
        .order_by(Point.ts)
        .limit(MAX_WINDOWS_PER_MARK * series.stride + t)
    ).all()
    if len(rows) < t:
        rows = session.execute(
            select(Point.ts, Point.values)
            .where(Point.series_id == series.id, Point.ts >= label.start_ts)
            .order_by(Point.ts)
            .limit(t)
        ).all()
    if len(rows) < t:
        return np.empty((0, t, f), np.float32)
    ts = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    values = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f8").reshape(len(rows), f)
    starts = cut_windows(ts, window_size=t, stride=series.stride, max_gap_us=None)
    windows = gather(values.astype(np.float32), starts[:MAX_WINDOWS_PER_MARK], t)
    # NOTE: windows with missing values are not scored by the service either.
    complete: np.ndarray = windows[~np.isnan(windows).any(axis=(1, 2))]
    return complete


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def feedback_view(*, session: Session, series: Series, default_samples: int) -> FeedbackView:
    versions = list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.series_id == series.id)
            .order_by(ModelVersion.version)
        )
    )
    current = next((v for v in versions if v.status == MODEL_ACTIVE), None)
    earlier = [
        v
        for v in versions
        if current is not None and v.version < current.version and v.activated_at is not None
    ]
    previous = earlier[-1] if earlier else None
    labels = list(
        session.scalars(
            select(Label)
            .where(Label.series_id == series.id, Label.deleted_at.is_(None))
            .order_by(Label.id.desc())
            .limit(MAX_MARKED)
        )
    )
    models = {row.version: _model(row) for row in (previous, current) if row is not None}
    marked: list[MarkedWindow] = []
    for label in labels:
        windows = _windows_of(session, series, label)
        scores: dict[int, float | None] = {}
        for version, model in models.items():
            if len(windows):
                batch = model.score(windows, n_samples=serving_samples(model, default_samples))
                scores[version] = float(np.max(batch.adjusted_score))
        start = label.start_ts or 0
        before = None if previous is None else scores.get(previous.version)
        now = None if current is None else scores.get(current.version)
        marked.append(
            MarkedWindow(
                label_id=label.id,
                label=label.label,
                start=datetime.fromtimestamp(start / MICROS, UTC),
                end=datetime.fromtimestamp((label.end_ts or start) / MICROS, UTC),
                windows=len(windows),
                previous=before,
                current=now,
                previous_ratio=_ratio(before, _threshold(previous)),
                current_ratio=_ratio(now, _threshold(current)),
                wanted="down" if series.classes.get(label.label) == "normal" else "up",
            )
        )
    per_day, per_version = _false_alarms(session, series, versions)
    return FeedbackView(
        previous=previous,
        current=current,
        previous_threshold=_threshold(previous),
        current_threshold=_threshold(current),
        marked=marked,
        per_day=per_day,
        per_version=per_version,
    )


def _false_alarms(
    session: Session, series: Series, versions: list[ModelVersion]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """False alarms operators reported, per day (of the verdict) and per version active then."""
    activations = sorted(
        ((_aware(v.activated_at), v.version) for v in versions if v.activated_at is not None),
    )
    verdicts = session.scalars(
        select(Label.created_at).where(
            Label.series_id == series.id,
            Label.label == "false_positive",
            Label.deleted_at.is_(None),
        )
    ).all()
    days: dict[tuple[date, int | None], int] = defaultdict(int)
    for created in verdicts:
        moment = _aware(created)
        active = None
        for activated, version in activations:
            if activated <= moment:
                active = version
        days[(moment.date(), active)] += 1
    ordered = sorted(days.items(), key=lambda item: str(item[0]))
    per_day = [
        {"day": day.isoformat(), "version": version, "false_alarms": count}
        for (day, version), count in ordered
    ]
    per_version: list[dict[str, Any]] = []
    for activated, version in activations:
        counts = [count for (_, active), count in ordered if active == version]
        per_version.append(
            {
                "version": version,
                "activated_at": activated,
                "days": len(counts),
                "false_alarms": sum(counts),
                "per_day": (sum(counts) / len(counts)) if counts else 0.0,
            }
        )
    return per_day, per_version
