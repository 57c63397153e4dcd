"""Which model is active for each series, and a bounded cache of loaded models, per API
process. The micro-batcher that calls them is `app/scoring/batcher.py`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import MODEL_ACTIVE, Activations, ModelVersion, Series
from app.errors import NoTrainedModel, SeriesNotFound
from models import ArtifactError, TrainedModel

log = logging.getLogger(__name__)

RESYNC_SECONDS = 300.0
"""The poll re-reads everything this often even if the generation did not move: a safety net
for a change made without counting it (a hand edit in the database)."""


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
    max_gap: float | None = None
    """Seconds; None: derived from the sampling interval (pipeline.gap_limit_us)."""

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
            max_gap=series.max_gap,
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


def serving_samples(model: TrainedModel, default: int) -> int:
    """L a model is served at: its series' training option, else the service's setting."""
    return model.train_config.score_samples or default


class ModelRegistry:
    """Active versions and series metadata, refreshed by polling; models cached LRU.

    The poll reads one row, the activation generation (db/models.py Activations), and
    re-reads series and active versions only when it moved: an idle poll costs the same at
    3 series as at 3,000 (issue 12, item 10).

    Thread-safe: it is read from the event loop and filled from the thread pool.
    """

    def __init__(self, sessions: sessionmaker[Session], *, cache_size: int) -> None:
        self._sessions = sessions
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._catching_up: asyncio.Lock | None = None
        self.generation = 0  # the activation generation the active versions reflect
        self._series: dict[int, SeriesInfo] = {}
        self._active: dict[int, int] = {}
        self._models: OrderedDict[tuple[int, int], TrainedModel] = OrderedDict()
        self._refreshed_at = float("-inf")  # time.monotonic() of the last full read

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
        """Re-read series metadata and active versions, and the generation they reflect."""
        started = time.monotonic()
        with self._sessions() as session:
            generation = session.scalar(select(Activations.generation).where(Activations.id == 1))
            series = {s.id: SeriesInfo.of(s) for s in session.scalars(select(Series))}
            rows = session.execute(
                select(ModelVersion.series_id, ModelVersion.version).where(
                    ModelVersion.status == MODEL_ACTIVE
                )
            )
            active = {series_id: version for series_id, version in rows}
        self._series = series
        self._active = active
        self._refreshed_at = started
        self.generation = max(self.generation, int(generation or 0))

    def refresh_if_changed(self) -> bool:
        """The hot-swap poll: one row read; a full `refresh` only if an activation or a
        series change was counted since the last one (or RESYNC_SECONDS passed)."""
        if time.monotonic() - self._refreshed_at < RESYNC_SECONDS:
            with self._sessions() as session:
                generation = session.scalar(
                    select(Activations.generation).where(Activations.id == 1)
                )
            if int(generation or 0) <= self.generation:
                return False
        self.refresh()
        return True

    async def catch_up(self, generation: int) -> None:
        """Re-read the active versions if an activation newer than this registry's was
        committed: `generation` comes from the request's own key lookup, so once a job says
        its version is active, every later request scores with it (read-your-writes)."""
        if generation <= self.generation:
            return
        if self._catching_up is None:
            self._catching_up = asyncio.Lock()
        async with self._catching_up:
            if generation <= self.generation:
                return
            await asyncio.to_thread(self.refresh)
            self.generation = max(self.generation, generation)

    def forget_series(self, series_id: int) -> None:
        self._series.pop(series_id, None)

    def forget_active(self, series_id: int) -> None:
        """Drop the cached active version, so that the next request asks the database."""
        self._active.pop(series_id, None)

    async def poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.refresh_if_changed)
            except SQLAlchemyError as exc:
                log.warning("model registry refresh failed: %s", exc.__class__.__name__)
            except Exception:
                log.exception("model registry refresh failed")
