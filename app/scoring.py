"""The scoring runtime of an API process: which model is active, a bounded cache of loaded
models, the micro-batcher that merges concurrent requests into one model call, and the
score log that keeps scored windows for feedback without writing on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import MODEL_ACTIVE, ModelVersion, ScoreRecord, Series
from app.errors import NoTrainedModel, SeriesNotFound, ServiceUnavailable
from app.metrics import SCORE_BATCH_SIZE
from app.scorer import ScorerProcess
from models import ArtifactError, ScoreBatch, TrainedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesInfo:
    """What the hot path needs to know of a series, cached per process."""

    id: int
    name: str
    channels: tuple[str, ...]
    window_size: int
    stride: int
    classes: dict[str, str]
    threshold_quantile: float

    @classmethod
    def of(cls, series: Series) -> SeriesInfo:
        return cls(
            id=series.id,
            name=series.name,
            channels=tuple(series.channels),
            window_size=series.window_size,
            stride=series.stride,
            classes=dict(series.classes),
            threshold_quantile=series.threshold_quantile,
        )


@dataclass(frozen=True)
class ActiveModel:
    series_id: int
    version: int
    model: TrainedModel


def load_artifact(blob: bytes, sha256: str, *, what: str) -> TrainedModel:
    """Verify an artifact's stored hash, then load it (safetensors: no code runs)."""
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise ArtifactError(f"{what}: artifact hash {digest[:12]} does not match {sha256[:12]}")
    return TrainedModel.from_bytes(blob)


class ModelRegistry:
    """Active versions and series metadata, refreshed by polling; models cached LRU.

    Thread-safe: it is read from the event loop and filled from the thread pool.
    """

    def __init__(self, sessions: sessionmaker[Session], *, cache_size: int) -> None:
        self._sessions = sessions
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._series: dict[int, SeriesInfo] = {}
        self._active: dict[int, int] = {}
        self._models: OrderedDict[tuple[int, int], TrainedModel] = OrderedDict()

    # -- cached lookups (cheap, no I/O) -------------------------------------------------------
    def cached_series(self, series_id: int) -> SeriesInfo | None:
        return self._series.get(series_id)

    def cached_active(self, series_id: int) -> ActiveModel | None:
        version = self._active.get(series_id)
        if version is None:
            return None
        with self._lock:
            model = self._models.get((series_id, version))
            if model is None:
                return None
            self._models.move_to_end((series_id, version))
        return ActiveModel(series_id, version, model)

    # -- loads (database I/O; call from a thread) ---------------------------------------------
    def load_series(self, series_id: int) -> SeriesInfo:
        with self._sessions() as session:
            series = session.get(Series, series_id)
            if series is None:
                raise SeriesNotFound(series_id)
            info = SeriesInfo.of(series)
        self._series[series_id] = info
        return info

    def load_active(self, series: SeriesInfo) -> ActiveModel:
        with self._sessions() as session:
            row = session.execute(
                select(ModelVersion.version, ModelVersion.artifact, ModelVersion.sha256).where(
                    ModelVersion.series_id == series.id, ModelVersion.status == MODEL_ACTIVE
                )
            ).one_or_none()
        if row is None:
            self._active.pop(series.id, None)
            raise NoTrainedModel(series.name)
        version, blob, sha256 = row
        model = load_artifact(blob, sha256, what=f"series {series.name} version {version}")
        with self._lock:
            self._models[(series.id, version)] = model
            self._models.move_to_end((series.id, version))
            while len(self._models) > self._cache_size:
                self._models.popitem(last=False)
        self._active[series.id] = version
        return ActiveModel(series.id, version, model)

    def refresh(self) -> None:
        """Re-read series metadata and active versions: the hot-swap poll."""
        with self._sessions() as session:
            series = {s.id: SeriesInfo.of(s) for s in session.scalars(select(Series))}
            rows = session.execute(
                select(ModelVersion.series_id, ModelVersion.version).where(
                    ModelVersion.status == MODEL_ACTIVE
                )
            )
            active = {series_id: version for series_id, version in rows}
        self._series = series
        self._active = active

    def forget_series(self, series_id: int) -> None:
        self._series.pop(series_id, None)

    def forget_active(self, series_id: int) -> None:
        """Drop the cached active version, so that the next request asks the database."""
        self._active.pop(series_id, None)

    async def poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.refresh)
            except SQLAlchemyError as exc:
                log.warning("model registry refresh failed: %s", exc.__class__.__name__)
            except Exception:
                log.exception("model registry refresh failed")


@dataclass
class _Pending:
    model: TrainedModel
    items: list[tuple[np.ndarray, asyncio.Future[ScoreBatch]]] = field(default_factory=list)
    windows: int = 0


class MicroBatcher:
    """Merges concurrent scoring requests for the same model into one model call.

    While the model is idle a request runs at once (no added latency at low load); while
    it is busy, arriving requests accumulate and run together as soon as it is free.
    With `max_wait` > 0 an idle batcher also holds a batch open that long to collect more.
    A batch never exceeds `max_batch_size` windows unless one request alone is larger.
    A failed model call fails every request of its batch, each with the same exception.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_wait: float,
        n_samples: int,
        scorer: ScorerProcess | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.n_samples = n_samples
        self.scorer = scorer  # None: score on a thread of this process
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-score")
        self._pending: OrderedDict[tuple[int, int], _Pending] = OrderedDict()
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._consumer: asyncio.Task[None] | None = None
        self.model_calls = 0

    async def score(
        self, key: tuple[int, int], model: TrainedModel, windows: np.ndarray
    ) -> ScoreBatch:
        loop = asyncio.get_running_loop()
        if self._consumer is None or self._consumer.done():
            self._wakeup, self._full = asyncio.Event(), asyncio.Event()
            self._consumer = loop.create_task(self._consume())
        assert self._wakeup is not None and self._full is not None
        future: asyncio.Future[ScoreBatch] = loop.create_future()
        pending = self._pending.get(key)
        if pending is None or pending.model is not model:
            pending = self._pending.setdefault(key, _Pending(model))
        pending.items.append((windows, future))
        pending.windows += len(windows)
        if pending.windows >= self.max_batch_size:
            self._full.set()
        self._wakeup.set()
        return await future

    async def _consume(self) -> None:
        assert self._wakeup is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if self.max_wait > 0 and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
            self._wakeup.clear()
            self._full.clear()
            while self._pending:
                key, pending = self._pending.popitem(last=False)
                for chunk in self._chunks(pending.items):
                    await self._run(loop, key, pending.model, chunk)

    def _chunks(
        self, items: list[tuple[np.ndarray, asyncio.Future[ScoreBatch]]]
    ) -> list[list[tuple[np.ndarray, asyncio.Future[ScoreBatch]]]]:
        chunks: list[list[tuple[np.ndarray, asyncio.Future[ScoreBatch]]]] = [[]]
        size = 0
        for item in items:
            if chunks[-1] and size + len(item[0]) > self.max_batch_size:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += len(item[0])
        return chunks

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[int, int],
        model: TrainedModel,
        items: list[tuple[np.ndarray, asyncio.Future[ScoreBatch]]],
    ) -> None:
        live = [(w, f) for w, f in items if not f.cancelled()]
        if not live:
            return
        windows = live[0][0] if len(live) == 1 else np.concatenate([w for w, _ in live])
        self.model_calls += 1
        try:
            if self.scorer is not None:
                SCORE_BATCH_SIZE.observe(len(windows))
                batch = await self.scorer.score(key, model, windows, n_samples=self.n_samples)
            else:
                batch = await loop.run_in_executor(self._executor, self._call, model, windows)
        except Exception as exc:  # every caller of the batch gets the failure
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for w, future in live:
            stop = start + len(w)
            if not future.done():
                future.set_result(batch if len(live) == 1 else slice_batch(batch, start, stop))
            start = stop

    def _call(self, model: TrainedModel, windows: np.ndarray) -> ScoreBatch:
        SCORE_BATCH_SIZE.observe(len(windows))
        return model.score(windows, n_samples=self.n_samples)

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        self._executor.shutdown(wait=True, cancel_futures=False)
        if self.scorer is not None:
            await self.scorer.close()


def slice_batch(batch: ScoreBatch, start: int, stop: int) -> ScoreBatch:
    return ScoreBatch(
        raw_score=batch.raw_score[start:stop],
        score=batch.score[start:stop],
        p_false_positive=batch.p_false_positive[start:stop],
        p_false_negative=batch.p_false_negative[start:stop],
        adjusted_score=batch.adjusted_score[start:stop],
        is_anomaly=batch.is_anomaly[start:stop],
        class_probabilities=batch.class_probabilities[start:stop],
        channel_contributions=batch.channel_contributions[start:stop],
        step_contributions=batch.step_contributions[start:stop],
        threshold=batch.threshold,
    )


class ScoreLog:
    """Scored windows, buffered in memory and written in bulk off the request path.

    If the database is away the rows wait (up to `max_pending`, oldest dropped first and
    counted) and go in with the next successful flush.
    """

    def __init__(self, sessions: sessionmaker[Session], *, max_pending: int = 200_000) -> None:
        self._sessions = sessions
        self._max_pending = max_pending
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.dropped = 0

    def append(
        self,
        *,
        series_id: int,
        version: int,
        windows: np.ndarray,
        batch: ScoreBatch,
        flagged: Sequence[bool],
        spans: Sequence[tuple[int, int]] | None = None,
    ) -> list[uuid.UUID]:
        """Buffer one request's scored windows; `flagged` is what the client was told."""
        now = utcnow()
        ids = [uuid.uuid4() for _ in range(len(windows))]
        raw = batch.raw_score.tolist()
        adjusted = batch.adjusted_score.tolist()
        blobs = windows.astype("<f4", copy=False)
        rows = [
            {
                "id": ids[i],
                "series_id": series_id,
                "model_version": version,
                "created_at": now,
                "start_ts": spans[i][0] if spans else None,
                "end_ts": spans[i][1] if spans else None,
                "window": blobs[i].tobytes(),
                "raw_score": raw[i],
                "adjusted_score": adjusted[i],
                "is_anomaly": flagged[i],
            }
            for i in range(len(windows))
        ]
        with self._lock:
            self._rows.extend(rows)
            overflow = len(self._rows) - self._max_pending
            if overflow > 0:
                del self._rows[:overflow]
                self.dropped += overflow
        return ids

    @property
    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        """Write what is buffered; returns the number of rows written. Thread-safe."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                with self._sessions() as session, session.begin():
                    if session.get_bind().dialect.name == "postgresql":
                        _copy_postgres(session, rows)
                    else:
                        session.execute(insert(ScoreRecord), rows)
            except (SQLAlchemyError, psycopg.Error) as exc:
                with self._lock:
                    self._rows[:0] = rows
                if isinstance(exc, psycopg.Error):  # the raw COPY's: one kind for callers
                    raise DBAPIError(_PG_COPY_SCORES, None, exc) from exc
                raise
            return len(rows)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.flush)
            except SQLAlchemyError as exc:
                log.warning(
                    "score log flush failed, %d rows kept for retry: %s",
                    self.pending,
                    exc.__class__.__name__,
                )


_PG_COPY_SCORES = (
    'COPY scores (id, series_id, model_version, created_at, start_ts, end_ts, "window", '
    "raw_score, adjusted_score, is_anomaly) FROM STDIN (FORMAT BINARY)"
)
_PG_SCORE_TYPES = {  # the COPY's columns, in its order, with the table's Postgres types
    "id": "uuid",
    "series_id": "int4",
    "model_version": "int4",
    "created_at": "timestamptz",
    "start_ts": "int8",
    "end_ts": "int8",
    "window": "bytea",
    "raw_score": "float8",
    "adjusted_score": "float8",
    "is_anomaly": "bool",
}


def _copy_postgres(session: Session, rows: list[dict[str, Any]]) -> None:
    """The rows by binary COPY, in the session's transaction: psycopg adapts each row in C,
    3 us of CPU per row where the ORM's executemany of INSERTs took 17-20 us, on a thread
    that competes with the event loop for the GIL; binary, so a window travels as its 3 KB
    of floats rather than hex. The types must match the table's (the tests write and read
    back every column on Postgres)."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(_PG_COPY_SCORES) as copy:
        copy.set_types(list(_PG_SCORE_TYPES.values()))
        for row in rows:
            copy.write_row([row[column] for column in _PG_SCORE_TYPES])


def database_unavailable(exc: SQLAlchemyError) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the database is unavailable ({exc.__class__.__name__}); retry shortly"
    )
