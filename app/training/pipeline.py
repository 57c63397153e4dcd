"""From stored points and labels to a trained, calibrated model version.

Windows are cut from the series' points in time order (`window_size` long, every `stride`
points), never across a gap longer than the series' gap limit (`gap_limit_us`). Windows with
more than VIGIL_MAX_MISSING_FRACTION missing values are left out; the others are imputed the
way scoring imputes them (models.data.impute_missing). Labels are applied to points first
(later labels win where ranges overlap), so a label covering part of a window supervises only
those time steps. Feedback on a window that a client posted (not a stored range) adds that
window itself, labelled at every step.

The split rule (VAL_FRACTION of the windows are held out for early stopping, calibration and
the comparison with the active version):
- overlapping windows (stride < window_size) are one stream: the newest unlabelled windows are
  held out, so that no held-out window shares points with a training one;
- windows that do not overlap (stride >= window_size) are separate examples (for instance one
  recording each): they are held out at random, stratified by class;
- every labelled window and every posted feedback window reaches training. Validation holds
  copies of a share of each class's labelled windows, never the only ones, so a label an
  operator gave on the newest alarms trains the next version (models.train.split_indices).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Label, Point, ScoreRecord, Series
from app.scoring.registry import serving_samples
from models import (
    BUILTIN_CLASSES,
    ClassSpec,
    ModelConfig,
    NotEnoughData,
    Progress,
    TrainConfig,
    TrainedModel,
    TrainingData,
    channel_means,
    fit,
    impute_missing,
    missing_fraction,
)
from models.config import FALSE_POSITIVE
from models.train import split_indices, window_class

log = logging.getLogger(__name__)

UNLABELLED = -1
VAL_FRACTION = 0.2
SAMPLING_INTERVAL_KEY = "sampling_interval_us"
"""Model metadata: the median sampling interval of the training points, µs (gap_limit_us)."""
ARCHITECTURE = ("flavour", "variant", "latent_dim", "autoregressive")
"""Training options that change the network's shape: a change of any of them trains from
scratch instead of warm-starting from the active model."""

T = TypeVar("T")


@dataclass
class Dataset:
    train: TrainingData
    validation: TrainingData
    classes: list[ClassSpec]
    summary: dict[str, int]
    interval_us: int | None = None
    """The median sampling interval of the points (µs), recorded in the model's metadata."""

    @property
    def has_labels(self) -> bool:
        return self.train.labels is not None or self.validation.labels is not None

    def relabelled(self, target: Sequence[ClassSpec]) -> Dataset:
        """The same windows with labels re-indexed into another model's classes."""
        return Dataset(
            train=relabel(self.train, self.classes, target),
            validation=relabel(self.validation, self.classes, target),
            classes=list(target),
            summary=self.summary,
            interval_us=self.interval_us,
        )


def load_points(
    *, session: Session, series_id: int, n_channels: int, max_points: int, chunk: int = 50_000
) -> tuple[np.ndarray, np.ndarray]:
    """The newest `max_points` points, oldest first: (P,) int64 µs and (P, F) float32.

    Streams rows in chunks and decodes each chunk at once, so memory stays linear in P.
    """
    newest_first = (
        select(Point.ts, Point.values)
        .where(Point.series_id == series_id)
        .order_by(Point.ts.desc())
        .limit(max_points)
        .execution_options(yield_per=chunk)
    )
    stamps: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for part in session.execute(newest_first).partitions():
        stamps.append(np.fromiter((row[0] for row in part), dtype=np.int64, count=len(part)))
        blob = b"".join(row[1] for row in part)
        values.append(np.frombuffer(blob, dtype="<f8").reshape(len(part), n_channels))
    if not stamps:
        return np.empty(0, np.int64), np.empty((0, n_channels), np.float32)
    ts = np.concatenate(stamps)[::-1].copy()
    vals = np.concatenate(values)[::-1].astype(np.float32)
    return ts, vals


def median_interval_us(ts: np.ndarray) -> int | None:
    """The median step between consecutive timestamps (µs), or None below two points."""
    if len(ts) < 2:
        return None
    return int(np.median(np.diff(ts)))


def recorded_interval(model: TrainedModel) -> int | None:
    """The median sampling interval (µs) of the model's training points, if it recorded one
    (models trained before it was recorded did not: the points' own median is used then)."""
    raw = model.metadata.get(SAMPLING_INTERVAL_KEY)
    return int(raw) if raw is not None and raw.isdigit() and int(raw) > 0 else None


def gap_limit_us(
    ts: np.ndarray, *, max_gap: float | None, factor: float, interval_us: int | None = None
) -> int | None:
    """The longest gap between consecutive points that a window may span, in µs.

    The rule: the series' `max_gap` (seconds) when it is set; otherwise `factor` (setting
    VIGIL_MAX_GAP_FACTOR, 3) times the median sampling interval, taken from the model when it
    recorded one at training (`interval_us`) and from the points `ts` otherwise. None: no
    limit can be known (fewer than two points and no recorded interval).
    """
    if max_gap is not None:
        return max(1, round(max_gap * 1_000_000))
    interval = interval_us if interval_us is not None else median_interval_us(ts)
    if interval is None:
        return None
    return max(1, math.ceil(factor * interval))


def cut_windows(
    ts: np.ndarray, *, window_size: int, stride: int, max_gap_us: int | None
) -> np.ndarray:
    """Start indices into `ts` (ascending µs timestamps) of the windows, oldest first.

    Windows are cut within runs of points whose consecutive gaps are at most `max_gap_us`
    (None: no limit): each run's first window starts at its first point, the next ones every
    `stride` points, and no window spans a longer gap. A run shorter than `window_size` gives
    no window. Take the starts to `gather` to build the windows.
    """
    if isinstance(ts, int | np.integer):
        raise TypeError("cut_windows takes the timestamps (an array), not a point count")
    n = len(ts)
    if n < window_size:
        return np.empty(0, np.int64)
    if max_gap_us is None:
        bounds = [(0, n)]
    else:
        breaks = (np.flatnonzero(np.diff(ts) > max_gap_us) + 1).tolist()
        bounds = list(zip([0, *breaks], [*breaks, n], strict=True))
    parts = [
        np.arange(lo, hi - window_size + 1, stride, dtype=np.int64)
        for lo, hi in bounds
        if hi - lo >= window_size
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def window_count(points: int, *, window_size: int, stride: int) -> int:
    """Windows cut from `points` consecutive points without a gap: at most this many."""
    return 0 if points < window_size else (points - window_size) // stride + 1


def gather(array: np.ndarray, starts: np.ndarray, window_size: int) -> np.ndarray:
    """(P, ...) -> (N, window_size, ...) for the windows starting at `starts`."""
    index = starts[:, None] + np.arange(window_size)[None, :]  # (N, T)
    return array[index]


def class_order(series_classes: dict[str, str], previous: Sequence[ClassSpec]) -> list[ClassSpec]:
    """The previous model's classes in their order, then the series' new classes.

    Keeping the order lets a warm start keep π's rows; new classes grow π at the end.
    """
    order = list(previous) if previous else list(BUILTIN_CLASSES)
    known = {c.name for c in order}
    for name, kind in series_classes.items():
        if name not in known:
            order.append(ClassSpec(name, "anomaly" if kind == "anomaly" else "normal"))
            known.add(name)
    return order


def point_labels(ts: np.ndarray, labels: Sequence[Label], index: dict[str, int]) -> np.ndarray:
    """(P,) class index per point, -1 where no live range label covers it."""
    out = np.full(len(ts), UNLABELLED, dtype=np.int64)
    for label in sorted(labels, key=lambda item: (item.created_at, item.id)):
        if label.start_ts is None or label.end_ts is None or label.label not in index:
            continue
        lo = int(np.searchsorted(ts, label.start_ts, side="left"))
        hi = int(np.searchsorted(ts, label.end_ts, side="right"))
        out[lo:hi] = index[label.label]
    return out


def build_dataset(
    *,
    session: Session,
    series: Series,
    settings: Settings,
    previous: Sequence[ClassSpec],
    seed: int = 0,
) -> Dataset:
    channels = len(series.channels)
    window_size = series.window_size
    max_points = settings.train_max_windows * series.stride + window_size
    ts, values = load_points(
        session=session, series_id=series.id, n_channels=channels, max_points=max_points
    )
    classes = class_order(series.classes, previous)
    index = {c.name: i for i, c in enumerate(classes)}

    labels = list(
        session.scalars(
            select(Label).where(Label.series_id == series.id, Label.deleted_at.is_(None))
        )
    )
    per_point = point_labels(ts, labels, index)
    interval = median_interval_us(ts)
    max_gap_us = gap_limit_us(
        ts, max_gap=series.max_gap, factor=settings.max_gap_factor, interval_us=interval
    )
    starts = cut_windows(ts, window_size=window_size, stride=series.stride, max_gap_us=max_gap_us)
    windows = gather(values, starts, window_size)  # (N, T, F), NaN where a value is missing
    window_labels = gather(per_point, starts, window_size)  # (N, T)
    # Windows with too much missing data teach nothing; the rest are imputed as scoring does.
    missing = missing_fraction(windows)
    usable = missing <= settings.max_missing_fraction
    skipped_missing = int((~usable).sum())
    windows, window_labels = windows[usable], window_labels[usable]
    windows = impute_missing(windows, channel_means(windows))

    # Feedback on posted windows (no stored range): the scored window itself is the example.
    extra_windows, extra_labels = _posted_feedback(
        session=session, labels=labels, index=index, shape=(window_size, channels)
    )

    has_labels = bool((window_labels != UNLABELLED).any())
    train_idx, val_idx = split_indices(
        window_labels if has_labels else None,
        len(windows),
        VAL_FRACTION,
        np.random.default_rng(seed),
        by_time=series.stride < window_size,
    )
    train_windows = np.concatenate([windows[train_idx], extra_windows])
    train_labels = np.concatenate([window_labels[train_idx], extra_labels])
    total = len(windows) + len(extra_windows)
    if total < settings.min_train_windows or val_idx.size == 0:
        raise NotEnoughData(
            f"series {series.name!r} has {total} training windows of {window_size} points "
            f"(needs at least {settings.min_train_windows}){_left_out(skipped_missing)}; "
            "ingest more points"
        )
    train_has_labels = bool((train_labels != UNLABELLED).any())
    val_labels = window_labels[val_idx]
    return Dataset(
        train=TrainingData(train_windows, train_labels if train_has_labels else None),
        validation=TrainingData(
            windows[val_idx], val_labels if (val_labels != UNLABELLED).any() else None
        ),
        classes=classes,
        interval_us=interval,
        summary={
            "points": len(ts),
            "gaps": 0 if max_gap_us is None else int((np.diff(ts) > max_gap_us).sum()),
            "missing_windows_skipped": skipped_missing,
            "windows": total,
            "train_windows": len(train_windows),
            "validation_windows": int(val_idx.size),
            "labelled_windows": int((train_labels != UNLABELLED).any(axis=1).sum()),
            "feedback_windows": len(extra_windows),
        },
    )


def _left_out(skipped_missing: int) -> str:
    """What the window count leaves out, for the not-enough-data message."""
    if not skipped_missing:
        return ""
    return (
        f", after leaving out {skipped_missing} windows with more than "
        "VIGIL_MAX_MISSING_FRACTION of their values missing"
    )


def _posted_feedback(
    *, session: Session, labels: Sequence[Label], index: dict[str, int], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The scored windows that feedback labels point at (by score_id), as training examples,
    in the order the labels were given (a later label of the same window sets its class).

    NOTE: the order must not come from the score log: its ids are random UUIDs, and windows in
    id order made two runs of the same job (same data, labels and seed) train on differently
    ordered examples, hence different batches and different models."""
    wanted: dict[uuid.UUID, int] = {}
    for label in sorted(labels, key=lambda item: (item.created_at, item.id)):
        if label.score_id is not None and label.start_ts is None and label.label in index:
            wanted[label.score_id] = index[label.label]
    if not wanted:
        return np.empty((0, *shape), np.float32), np.empty((0, shape[0]), np.int64)
    query = select(ScoreRecord.id, ScoreRecord.window).where(ScoreRecord.id.in_(list(wanted)))
    stored = {score_id: blob for score_id, blob in session.execute(query).tuples()}
    kept = [score_id for score_id in wanted if score_id in stored]
    if len(kept) < len(wanted):
        log.info("%d feedback windows have expired from the score log", len(wanted) - len(kept))
    if not kept:
        return np.empty((0, *shape), np.float32), np.empty((0, shape[0]), np.int64)
    windows = [np.frombuffer(stored[score_id], dtype="<f4").reshape(shape) for score_id in kept]
    targets = [np.full(shape[0], wanted[score_id], dtype=np.int64) for score_id in kept]
    return np.stack(windows), np.stack(targets)


def relabel(
    data: TrainingData, source: Sequence[ClassSpec], target: Sequence[ClassSpec]
) -> TrainingData:
    """The same windows with labels re-indexed into `target`'s classes (-1 where absent)."""
    if data.labels is None:
        return data
    mapping = np.full(len(source) + 1, UNLABELLED, dtype=np.int64)  # last slot maps -1
    where = {c.name: i for i, c in enumerate(target)}
    for i, spec in enumerate(source):
        mapping[i] = where.get(spec.name, UNLABELLED)
    labels = mapping[data.labels]  # -1 indexes the last slot, which holds -1
    return TrainingData(data.windows, labels if (labels != UNLABELLED).any() else None)


@dataclass
class Outcome:
    model: TrainedModel
    activate: bool
    note: str | None
    metrics: dict[str, float | int | str | None]


def json_metrics(raw: dict[str, Any]) -> dict[str, float | int | str | None]:
    """Metrics as JSON can hold them: NaN and infinities (e.g. CE without labels) become null."""
    out: dict[str, float | int | str | None] = {}
    for key, value in raw.items():
        if isinstance(value, float | np.floating):
            out[key] = float(value) if math.isfinite(value) else None
        elif isinstance(value, int | np.integer):
            out[key] = int(value)
        else:
            out[key] = str(value)
    return out


def train_version(
    *,
    dataset: Dataset,
    series: Series,
    settings: Settings,
    active: TrainedModel | None,
    seed: int,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Fit (warm-started from the active model), then decide whether to activate.

    Runs at a lower CPU priority (`settings.train_sched_idle`, `settings.train_nice`), so
    that scoring in other processes on the same machine keeps its latency while a model trains.
    """
    return at_lower_priority(
        settings.train_nice,
        idle=settings.train_sched_idle,
        work=lambda: _train_version(
            dataset=dataset,
            series=series,
            settings=settings,
            active=active,
            seed=seed,
            progress=progress,
            should_stop=should_stop,
        ),
    )


def at_lower_priority(nice: int, work: Callable[[], T], *, idle: bool = False) -> T:
    """Run `work` in a thread of its own at a lower CPU priority than the caller's.

    `idle`: Linux's SCHED_IDLE policy, under which the thread runs only on CPU time that
    nothing else wants, and any normal thread that wakes up (a request arriving) takes the
    CPU from it at once, where a thread that is merely niced holds it until the scheduler's
    next decision, several milliseconds later. `nice`: that many Unix nice steps (where
    SCHED_IDLE is unavailable, or as well: it is what `ps` and `top` show).

    NOTE: Linux keeps the policy and the nice value per thread, and threads inherit both from
    the thread that starts them (torch's intra-op threads too). They end with the thread, so
    the caller (a worker's main loop, or a test) keeps its own. Where priorities cannot be
    changed, `work` runs at the caller's priority.
    """
    use_idle = idle and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")
    if (nice <= 0 and not use_idle) or not hasattr(os, "setpriority"):
        return work()
    outcome: dict[str, Any] = {}

    def target() -> None:
        thread_id = threading.get_native_id()
        try:
            if nice > 0:
                current = os.getpriority(os.PRIO_PROCESS, thread_id)
                os.setpriority(os.PRIO_PROCESS, thread_id, min(19, current + nice))
            if use_idle:
                os.sched_setscheduler(thread_id, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.warning("could not lower the training priority: %s", exc)
        try:
            outcome["result"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="vigil-train", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result


def _train_version(
    *,
    dataset: Dataset,
    series: Series,
    settings: Settings,
    active: TrainedModel | None,
    seed: int,
    progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None,
) -> Outcome:
    train_config, model_config = configs(settings=settings, series=series, seed=seed, active=active)
    model = fit(
        dataset.train,
        classes=dataset.classes,
        channels=series.channels,
        model_config=model_config,
        train_config=train_config,
        validation=dataset.validation,
        warm_start=active if _same_architecture(active, model_config) else None,
        progress=progress,
        should_stop=should_stop,
    )
    new_eval = model.evaluate(dataset.validation)
    metrics = job_metrics(model=model, dataset=dataset, evaluation=new_eval)
    if active is None:
        return Outcome(model, True, None, metrics)
    old_eval = active.evaluate(relabel(dataset.validation, dataset.classes, active.classes))
    metrics["active_val_loss"] = json_metrics(old_eval)["loss"]
    if not dataset.has_labels:
        activate, note = decide_activation(
            new_loss=new_eval["loss"],
            active_loss=old_eval["loss"],
            tolerance=settings.activation_tolerance,
        )
        return Outcome(model, activate, note, metrics)
    # Labels, feedback above all, are judged by what operators see: alarms on the windows
    # they dismissed, faults they confirmed, and false alarms on held-out normal windows.
    quantile = series.threshold_quantile
    new_errors = alarm_errors(
        model, dataset, quantile, serving_samples(model, settings.score_samples)
    )
    old_errors = alarm_errors(
        active,
        dataset.relabelled(active.classes),
        quantile,
        serving_samples(active, settings.score_samples),
    )
    metrics.update({f"{k}": v for k, v in new_errors.items()})
    metrics.update({f"active_{k}": v for k, v in old_errors.items()})
    activate, note = decide_feedback_activation(
        new=new_errors, active=old_errors, new_loss=new_eval["loss"]
    )
    return Outcome(model, activate, note, metrics)


def configs(
    *, settings: Settings, series: Series, seed: int, active: TrainedModel | None
) -> tuple[TrainConfig, ModelConfig | None]:
    """The service's training defaults with the series' own options on top (TrainingOptions).
    The model config is None (the package's default, or the active model's on warm start)
    unless the series sets its architecture."""
    options: dict[str, Any] = dict(series.training or {})
    train_config = TrainConfig(
        steps=options.get("steps", settings.train_steps),
        min_steps=settings.train_min_steps,
        class_min_steps=settings.train_class_min_steps,
        max_steps=max(settings.train_max_steps, settings.train_min_steps),
        batch_size=options.get("batch_size", settings.train_batch_size),
        lr=options.get("lr", TrainConfig.lr),
        patience=options.get("patience", settings.train_patience),
        threads=settings.train_threads,
        threshold_quantile=series.threshold_quantile,
        score_samples=options.get("score_samples"),
        members=options.get("members", settings.train_members),
        seed=seed,
    )
    architecture = {k: options[k] for k in ARCHITECTURE if k in options}
    if not architecture:
        return train_config, None
    base = active.config if active is not None else ModelConfig()
    return train_config, dataclasses.replace(base, **architecture)


def _same_architecture(active: TrainedModel | None, config: ModelConfig | None) -> bool:
    """Warm start only a network of the same shape (the series may have changed its options)."""
    if active is None or config is None:
        return active is not None
    return all(getattr(active.config, k) == getattr(config, k) for k in ARCHITECTURE)


def job_metrics(
    *, model: TrainedModel, dataset: Dataset, evaluation: dict[str, float]
) -> dict[str, float | int | str | None]:
    """What a job reports: one name per figure, counts as integers (schemas/jobs.py says what
    each means)."""
    trained = model.metrics
    return json_metrics(
        {
            **dataset.summary,
            "elbo_windows": int(trained["n_elbo_windows"]),
            "steps": int(trained["steps_run"]),
            "step_budget": int(trained["step_budget"]),
            "step_floor": int(trained["step_floor"]),
            "batch_size": int(trained["batch_size"]),
            "best_step": int(trained["best_step"]),
            "stopped": trained["stopped"],
            "train_seconds": trained["train_seconds"],
            "val_loss": evaluation["loss"],
            "val_nll": evaluation["nll"],
            "val_kl": evaluation["kl"],
            "val_ce": evaluation["ce"],
            "val_accuracy": evaluation["accuracy"],
            "threshold": trained.get("threshold"),
            "calibration_source": trained.get("calibration_source"),
            "calibration_outliers": trained.get("calibration_outliers"),
        }
    )


def alarm_errors(
    model: TrainedModel, dataset: Dataset, quantile: float, n_samples: int
) -> dict[str, int]:
    """The model's mistakes at its own threshold, as operators would count them:
    marked_alarms, windows labelled false_positive that still alarm; missed_faults, windows
    with an anomaly-kind label that do not; val_false_alarms, held-out unlabelled windows
    that alarm."""
    kinds = {c.name: c.kind for c in model.classes}
    index = {c.name: i for i, c in enumerate(model.classes)}
    marked_alarms = missed_faults = val_false_alarms = 0
    for part in (dataset.train, dataset.validation):
        if part.labels is None:
            continue
        majority = window_class(part.labels)
        anomaly_kinds = [i for i, c in enumerate(model.classes) if kinds[c.name] == "anomaly"]
        anomalous = np.asarray(np.isin(part.labels, anomaly_kinds).any(axis=1))
        dismissed = np.asarray(majority == index.get(FALSE_POSITIVE, -2)) & ~anomalous
        chosen = dismissed | anomalous
        if not chosen.any():
            continue
        flagged = model.score(
            part.windows[chosen], n_samples=n_samples, threshold_quantile=quantile
        ).is_anomaly
        marked_alarms += int(flagged[dismissed[chosen]].sum())
        missed_faults += int((~flagged[anomalous[chosen]]).sum())
    val = dataset.validation
    unlabelled = (
        np.ones(len(val.windows), dtype=bool)
        if val.labels is None
        else (val.labels == UNLABELLED).all(axis=1)
    )
    if unlabelled.any():
        val_false_alarms = int(
            model.score(
                val.windows[unlabelled], n_samples=n_samples, threshold_quantile=quantile
            ).is_anomaly.sum()
        )
    return {
        "marked_alarms": marked_alarms,
        "missed_faults": missed_faults,
        "val_false_alarms": val_false_alarms,
    }


def decide_feedback_activation(
    *, new: dict[str, int], active: dict[str, int], new_loss: float
) -> tuple[bool, str | None]:
    """Activate a version trained on labels unless it makes more of the mistakes operators
    see (alarm_errors, summed) than the active one, or its validation loss is not finite."""
    if not math.isfinite(new_loss):
        return False, f"kept as candidate: its validation loss is {new_loss}"
    if sum(new.values()) <= sum(active.values()):
        return True, None
    return False, (
        "kept as candidate: it makes more of the mistakes operators see than the active "
        f"version: {new['marked_alarms']} alarms on windows marked false_positive (active "
        f"{active['marked_alarms']}), {new['missed_faults']} labelled faults missed (active "
        f"{active['missed_faults']}), {new['val_false_alarms']} false alarms on held-out "
        f"normal windows (active {active['val_false_alarms']})"
    )


def decide_activation(
    *, new_loss: float, active_loss: float, tolerance: float
) -> tuple[bool, str | None]:
    """Activate unless the new version's validation loss is worse than the active one's by
    more than `tolerance` of its magnitude (losses are NLLs: they may be negative)."""
    if not math.isfinite(new_loss):
        return False, f"kept as candidate: its validation loss is {new_loss}"
    if not math.isfinite(active_loss) or new_loss <= active_loss + tolerance * abs(active_loss):
        return True, None
    return False, (
        f"kept as candidate: validation loss {new_loss:.4g} is worse than the active "
        f"version's {active_loss:.4g} (tolerance {tolerance:.0%})"
    )
