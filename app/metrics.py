"""Prometheus metrics.

Counters and histograms live in each process (in multiprocess mode, in files under
PROMETHEUS_MULTIPROC_DIR, which `vigil serve` sets before prometheus_client is imported).
Gauges that describe shared state (queue depth, active versions, data freshness) come from
the database through `DatabaseGauges`, whose scrape cost does not grow with the number of
series: what changes seldom is re-read only when it changed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from typing import Any, NamedTuple

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import (
    DELIVERY_PENDING,
    JOB_QUEUED,
    MODEL_ACTIVE,
    Activations,
    Alarm,
    Job,
    ModelVersion,
    Point,
    Series,
    WebhookDelivery,
)
from app.detection.events import EVENTS

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "vigil_http_requests",
    "HTTP requests by route template and status.",
    ["method", "route", "status"],
)
REQUEST_LATENCY = Histogram(
    "vigil_http_request_duration_seconds",
    "HTTP request latency by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WINDOWS_SCORED = Counter("vigil_windows_scored", "Windows scored.", ["series"])
ANOMALIES_FLAGGED = Counter(
    "vigil_anomalies_flagged",
    "Scored windows whose adjusted score passed the threshold.",
    ["series"],
)
ADJUSTED_SCORE = Histogram(
    "vigil_adjusted_score",
    "Adjusted (calibrated, feedback-corrected) anomaly scores.",
    ["series"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0),
)
SCORE_BATCH_SIZE = Histogram(
    "vigil_score_batch_size",
    "Windows per model call made by the micro-batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
LABELS = Counter("vigil_labels", "Labels created, by class.", ["series", "label"])
FEEDBACK = Counter(
    "vigil_feedback",
    "Operator feedback on scores (false_positive, false_negative) by the model version scored.",
    ["series", "model_version", "kind"],
)
POINTS_INGESTED = Counter("vigil_points_ingested", "Points received for ingestion.", ["series"])
JOBS = Counter("vigil_jobs", "Training jobs by the status they reached.", ["status"])
TRAINING_DURATION = Histogram(
    "vigil_training_duration_seconds",
    "Wall time of training jobs, from claim to result.",
    buckets=(1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
WEBHOOK_DELIVERIES = Counter(
    "vigil_webhook_deliveries",
    "Webhook delivery attempts by event and outcome (delivered, retry, failed).",
    ["event", "outcome"],
)

DETECT_WINDOWS = Counter(
    "vigil_detect_windows",
    "Windows the detector scored on ingest: `new` ones, and `rescored` ones whose points changed.",
    ["series", "result"],
)
DETECT_FLAGGED = Counter(
    "vigil_detect_flagged_windows",
    "Windows the detector flagged (a window scored again counts only if it was not flagged).",
    ["series"],
)
ALARMS_OPENED = Counter("vigil_alarms_opened", "Alarms opened.", ["series", "kind"])
ALARMS_CLOSED = Counter(
    "vigil_alarms_closed", "Alarms closed after a quiet period.", ["series", "kind"]
)
DETECT_LAG = Histogram(
    "vigil_detect_lag_seconds",
    "From a committed point batch to its stored window scores.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)


class DetectionMetrics(NamedTuple):
    """The detection metrics of one series, with the series label applied."""

    windows_new: Any
    windows_rescored: Any
    windows_flagged: Any
    lag: Any
    series: str

    def opened(self, kind: str) -> Any:
        return ALARMS_OPENED.labels(self.series, kind)

    def closed(self, kind: str) -> Any:
        return ALARMS_CLOSED.labels(self.series, kind)


@functools.lru_cache(maxsize=4096)
def detection_metrics(series: str) -> DetectionMetrics:
    return DetectionMetrics(
        DETECT_WINDOWS.labels(series, "new"),
        DETECT_WINDOWS.labels(series, "rescored"),
        DETECT_FLAGGED.labels(series),
        DETECT_LAG,
        series,
    )


class SeriesMetrics(NamedTuple):
    """The scoring metrics of one series, with the series label applied."""

    windows_scored: Any
    anomalies_flagged: Any
    adjusted_score: Any


@functools.lru_cache(maxsize=4096)
def series_metrics(series: str) -> SeriesMetrics:
    """Looked up once per series, not on every request (`labels()` validates and locks)."""
    return SeriesMetrics(
        WINDOWS_SCORED.labels(series),
        ANOMALIES_FLAGGED.labels(series),
        ADJUSTED_SCORE.labels(series),
    )


FEW = 4
"""Up to this many values, `observe()` each costs less than numpy's fixed overheads."""


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe every value of `values` in `histogram` (a child with its labels applied).

    The same result as `observe()` per value, with one update per bucket touched instead of
    one per value: in multiprocess mode each update is a locked write to a memory-mapped
    file, and a request of 256 windows would make 512 of them. It uses the client's own
    bucket values (`_upper_bounds`, `_buckets`, `_sum` of prometheus_client's Histogram),
    and falls back to `observe()` per value should a future version change them.
    """
    amounts = np.asarray(values, dtype=np.float64).ravel()
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if (
        amounts.size <= FEW
        or bounds is None
        or buckets is None
        or total is None
        or len(bounds) != len(buckets)
    ):
        for value in amounts.tolist():
            histogram.observe(value)
        return
    # observe() counts a value in the first bucket whose upper bound is >= it (NaN: none).
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), amounts, side="left")
    counts = np.bincount(index, minlength=len(bounds) + 1)[: len(bounds)]
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(float(counts[i]))
    total.inc(float(amounts.sum()))


class NewestPoints:
    """The newest stored point of each series (Unix seconds), as this process knows it.

    Ingestion in this process notes each committed batch (app/services/points.py); a full read
    of the database (`DatabaseGauges.resync_newest`) starts it and, every RESYNC_SECONDS,
    brings in what other processes wrote and drops deleted series. So a scrape reads memory,
    not the newest point of every series: its cost does not grow with the number of series.
    """

    NAME = "vigil_last_point_timestamp_seconds"
    HELP = "Unix time of the newest stored point per series."

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._lines: dict[str, str] = {}  # each series' exposition line, made when it changed
        self._text: str | None = None  # all of them, made at the first scrape after a change
        self.loaded = False

    def note(self, series: str, ts_us: int) -> None:
        seconds = ts_us / 1e6
        with self._lock:
            if seconds > self._seconds.get(series, float("-inf")):
                self._seconds[series] = seconds
                self._lines[series] = sample_line(self.NAME, series, seconds)
                self._text = None

    def replace(self, read: dict[str, float], noted_since: dict[str, float]) -> None:
        """Take a full read; what this process noted while it ran is newer, and kept."""
        with self._lock:
            merged = dict(read)
            for series, seconds in noted_since.items():
                if series in merged:
                    merged[series] = max(merged[series], seconds)
            if merged != self._seconds:
                self._lines = {
                    series: (
                        self._lines[series]
                        if self._seconds.get(series) == seconds
                        else sample_line(self.NAME, series, seconds)
                    )
                    for series, seconds in merged.items()
                }
                self._seconds = merged
                self._text = None
            self.loaded = True

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)

    def text(self) -> str:
        """The gauge's exposition, made again only after a change."""
        with self._lock:
            if self._text is None:
                self._text = family_text(
                    self.NAME, self.HELP, [self._lines[k] for k in sorted(self._lines)]
                )
            return self._text


def go_float(value: float) -> str:
    """A sample value as the text format writes it (Go's float formatting)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def sample_line(name: str, series: str, value: float, *, label: str = "series") -> str:
    """One sample of a gauge with one label, as prometheus_client writes it."""
    escaped = series.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return f'{name}{{{label}="{escaped}"}} {go_float(value)}\n'


def family_text(name: str, help_text: str, lines: list[str]) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n" + "".join(lines)


RESYNC_SECONDS = 60.0
"""How often an API process re-reads the newest point of every series (one query): what other
processes ingested reaches its `vigil_last_point_timestamp_seconds` within this time, well
inside the 15 minutes after which VigilSeriesNoData fires."""


class DatabaseGauges:
    """Gauges of shared state, one instance per API process.

    A scrape runs a fixed number of small queries whatever the number of series: the job
    queue depth, the activation generation, the open alarms (only series that have some),
    the outbox backlog. Active versions are re-read only when the generation moved; the
    newest point per series comes from `newest` (NewestPoints). Nothing is emitted for a
    series with nothing to report (no active model, no point, no open alarm), and a series'
    line is written again only when its value changed (the model age excepted): rendering
    3,000 samples through prometheus_client took longer than all the queries.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self.newest = NewestPoints()
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._active: list[tuple[str, float]] = []  # (series, trained at), by series
        self._versions = ""  # the exposition of vigil_active_model_version

    def resync_newest(self) -> None:
        """Read the newest point of every series (O(series) index probes: call it seldom)."""
        noted_before = self.newest.snapshot()
        # A correlated max per series walks the (series_id, ts) index backwards: no scan.
        last_ts = select(func.max(Point.ts)).where(Point.series_id == Series.id).scalar_subquery()
        with self._sessions() as session:
            read = {
                name: ts / 1e6
                for name, ts in session.execute(select(Series.name, last_ts))
                if ts is not None
            }
        noted = self.newest.snapshot()
        since = {k: v for k, v in noted.items() if v > noted_before.get(k, float("-inf"))}
        self.newest.replace(read, since)

    async def poll(self, interval: float = RESYNC_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.resync_newest)
            except Exception as exc:  # the database may be away; the next round tries again
                log.warning("metrics resync failed: %s", exc.__class__.__name__)

    def text(self) -> str:
        """The text exposition of the database gauges (reads the database: from a thread)."""
        if not self.newest.loaded:
            self.resync_newest()
        with self._sessions() as session:
            depth = session.scalar(select(func.count()).where(Job.status == JOB_QUEUED))
            generation = session.scalar(select(Activations.generation).where(Activations.id == 1))
            with self._lock:
                if generation != self._generation:
                    rows = session.execute(
                        select(Series.name, ModelVersion.version, ModelVersion.trained_at)
                        .join(ModelVersion, ModelVersion.series_id == Series.id)
                        .where(ModelVersion.status == MODEL_ACTIVE)
                        .order_by(Series.name)
                    ).all()
                    self._active = [(name, trained_at.timestamp()) for name, _, trained_at in rows]
                    self._versions = family_text(
                        "vigil_active_model_version",
                        "Active model version per series.",
                        [
                            sample_line("vigil_active_model_version", n, float(v))
                            for n, v, _ in rows
                        ],
                    )
                    self._generation = generation
                active, versions = self._active, self._versions
            alarms = session.execute(
                select(Series.name, func.count(Alarm.id))
                .join(Alarm, Alarm.series_id == Series.id)
                .where(Alarm.closed_at.is_(None))
                .group_by(Series.name)
                .order_by(Series.name)
            ).all()
            pending = {
                event: int(count)
                for event, count in session.execute(
                    select(WebhookDelivery.event, func.count())
                    .where(WebhookDelivery.status == DELIVERY_PENDING)
                    .group_by(WebhookDelivery.event)
                )
            }
        now = time.time()
        return "".join(
            (
                family_text(
                    "vigil_job_queue_depth",
                    "Training jobs waiting for a worker.",
                    [f"vigil_job_queue_depth {go_float(float(depth or 0))}\n"],
                ),
                versions,
                family_text(
                    "vigil_model_age_seconds",
                    "Seconds since the active model of a series was trained.",
                    [sample_line("vigil_model_age_seconds", n, now - t) for n, t in active],
                ),
                self.newest.text(),
                family_text(
                    "vigil_open_alarms",
                    "Alarms not closed yet, per series (only series that have some).",
                    [sample_line("vigil_open_alarms", n, float(c)) for n, c in alarms],
                ),
                family_text(
                    "vigil_webhook_outbox_backlog",
                    "Webhook deliveries waiting to be delivered (queued or between retries), "
                    "by event.",
                    [
                        sample_line(
                            "vigil_webhook_outbox_backlog",
                            event,
                            float(pending.get(event, 0)),
                            label="event",
                        )
                        for event in sorted({*EVENTS, *pending})
                    ],
                ),
            )
        )


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(gauges: DatabaseGauges | None) -> tuple[bytes, str]:
    """The text exposition of this process (or all API processes) plus the database gauges."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if gauges is not None:
        body += gauges.text().encode()
    return body, CONTENT_TYPE_LATEST
