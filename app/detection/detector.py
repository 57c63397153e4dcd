"""The detector: scores the windows that ingestion adds or changes, and keeps alarms.

Ingestion marks the time range a batch wrote (marks.py). Detector loops run in each API
process; a pass claims one marked series with a lease in the database (`FOR UPDATE SKIP
LOCKED` on Postgres, as the training worker claims jobs), so several processes share the
work and never score a series at the same time. The claim moves the marked range aside, so
that batches arriving meanwhile mark the series again for the next pass.

Windows follow the series' window grid, as training cuts them: `window_size` consecutive
points, one every `stride` points. The grid is anchored where the first window was scored
(the series' first point counts as position 0, as app/training/pipeline.py `cut_windows`
does over the whole series) and each stored window keeps its position `seq`. A pass starts
at the newest stored window that ends before the changed range (its points cannot have
moved), or extends the grid backwards for points written before the first stored window,
and cuts windows forward from there. Each window's digest (its timestamps and values) says
whether it changed: unchanged windows are not scored again, changed and new ones are, with
the active model at that time. Once the cut is past the changed range and meets a stored
window at the same place with the same digest, the rest is unchanged and the pass stops.
Windows on the old grid that an inserted point moved are deleted.

Points written into a hole move every later window: each is renumbered in place (the points
moved it by whole strides) or cut anew (they moved it off the grid), and the alarms move with
their windows (app/detection/alarms.py `renumber_alarms`). A pass that stops before the end
then renumbers the windows it did not reach as far as it can (`_renumber_rest`) and leaves
them to the next passes, up to the last stored window: they are not in step with the grid,
even when they look it, until a pass has been over them.

The stored scores, the alarms they change and the end of the lease are one transaction, so
the lease is checked again there: a detector that lost its series writes nothing. The lease
row is updated last in that transaction, since ingestion marks the same row (marks.py).

Before a series has an active model (or with `detect` off) its marks are dropped: windows
ingested then are never scored. A window that spans a gap longer than the series' limit
(app/training/pipeline.py `gap_limit_us`) is never scored; one with more than
`VIGIL_MAX_MISSING_FRACTION` of its values missing waits until they are written, and the
missing values of the others are imputed as everywhere (app/services/windows.py
`prepare_for_scoring`); a model that cannot score the windows drops the marks
and logs why, rather than trying again forever. A newly activated version scores from the
next pass on; history is not scored again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import MODEL_ACTIVE, DetectState, ModelVersion, Point, Series, WindowScore
from app.detection.alarms import renumber_alarms, update_alarms
from app.metrics import detection_metrics
from app.scoring.registry import load_artifact, serving_samples
from app.services.windows import prepare_for_scoring
from app.training.pipeline import gap_limit_us, gather, recorded_interval
from models import ModelError, TrainedModel
from models.data import missing_fraction
from models.quality import describe

log = logging.getLogger(__name__)

SCORE_CHUNK = 256
"""Windows per model call."""


@dataclass(frozen=True)
class Claim:
    series_id: int
    start: int
    """Earliest timestamp (µs) written since the series was last scored."""
    until: int
    """Latest timestamp (µs) written."""
    since: datetime
    """When the oldest of those writes was made."""


@dataclass(frozen=True)
class Cut:
    """Windows cut from the grid: window k starts at ts[starts[k]] and has position seq0 + k."""

    ts: np.ndarray
    values: np.ndarray
    starts: np.ndarray
    seq0: int


@dataclass
class Pass:
    """What one pass found and did, for the metrics once it is committed."""

    series_name: str = ""
    new: int = 0
    rescored: int = 0
    newly_flagged: int = 0
    opened: list[str] | None = None
    closed: list[str] | None = None
    done: bool = True


class LeaseLost(Exception):
    """Another detector holds the series now: this pass's result is dropped."""


def _least_greatest(session: Session) -> tuple[Any, Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.least, func.greatest
    return func.min, func.max  # SQLite's scalar two-argument forms


def window_digest(ts: np.ndarray, values: np.ndarray) -> bytes:
    """BLAKE2b-128 of a window's timestamps and float64 values."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(np.ascontiguousarray(ts, dtype="<i8").tobytes())
    hasher.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return hasher.digest()


class ModelCache:
    """The active model of recently scored series, shared by the detector threads of a
    process: (series id) -> (version, model), least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._models: OrderedDict[int, tuple[int, TrainedModel]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, series_id: int, version: int) -> tuple[int, TrainedModel] | None:
        with self._lock:
            cached = self._models.get(series_id)
            if cached is None or cached[0] != version:
                return None
            self._models.move_to_end(series_id)
            return cached

    def put(self, series_id: int, version: int, model: TrainedModel) -> None:
        with self._lock:
            self._models[series_id] = (version, model)
            self._models.move_to_end(series_id)
            while len(self._models) > self.size:
                self._models.popitem(last=False)


def _renumber_rest(session: Session, series: Series, *, cut: Cut, after: int) -> None:
    """Move the stored windows that start after `after` (the last window of a pass that
    stopped before the end) by as many positions as the points written before them moved
    them. The next pass starts after `after` and stops where a stored window is in step:
    left as they were, the windows past it looked in step and were never renumbered.

    Windows the points moved off the grid are cut anew by the next passes; until then their
    positions come after the new grid's (rounded up), in order, so no alarm folds across.
    """
    first = session.execute(
        select(WindowScore.start_ts, WindowScore.seq)
        .where(WindowScore.series_id == series.id, WindowScore.start_ts > after)
        .order_by(WindowScore.start_ts)
        .limit(1)
    ).one_or_none()
    if first is None:
        return
    points_before = (
        session.scalar(
            select(func.count())
            .select_from(Point)
            .where(
                Point.series_id == series.id,
                Point.ts >= int(cut.ts[0]),
                Point.ts < int(first.start_ts),
            )
        )
        or 0
    )
    shift = cut.seq0 + -(-points_before // series.stride) - int(first.seq)
    if shift:
        session.execute(
            update(WindowScore)
            .where(WindowScore.series_id == series.id, WindowScore.start_ts > after)
            .values(seq=WindowScore.seq + shift)
            .execution_options(synchronize_session=False)
        )


class Detector:
    """One detector loop (a thread of an API process: DetectorPool starts them)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: sessionmaker[Session],
        name: str | None = None,
        models: ModelCache | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:detect:{id(self) & 0xFFFF:x}"
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._models = models or ModelCache(settings.model_cache_size)

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look for work now (ingestion in this process just marked a series)."""
        self._wake.set()

    def run_forever(self) -> None:
        while not self.stop_event.is_set():
            try:
                busy = self.run_once()
            except SQLAlchemyError as exc:
                log.warning("detector database error: %s; retrying", exc.__class__.__name__)
                busy = False
            except Exception:
                log.exception("detector pass failed")
                busy = False
            if not busy:
                self._wake.wait(self.settings.detect_poll_seconds)
                self._wake.clear()

    def run_once(self) -> bool:
        """Claim one marked series and score what changed. False if none was marked."""
        claim = self.claim()
        if claim is None:
            return False
        try:
            self.process(claim)
        except LeaseLost:
            log.warning("detector %s lost series %d; result dropped", self.name, claim.series_id)
        except BaseException:
            self._release(claim.series_id, retry_in=self.settings.detect_poll_seconds * 20)
            raise
        return True

    # -- claiming ----------------------------------------------------------------------------
    def claim(self) -> Claim | None:
        now = utcnow()
        lease_until = now + timedelta(seconds=self.settings.detect_lease_seconds)
        with self.sessions() as session, session.begin():
            least, greatest = _least_greatest(session)
            candidate = (
                select(DetectState.series_id)
                .where(
                    or_(DetectState.dirty_from.is_not(None), DetectState.claimed_from.is_not(None)),
                    or_(DetectState.lease_expires_at.is_(None), DetectState.lease_expires_at < now),
                )
                .order_by(func.coalesce(DetectState.claimed_at, DetectState.dirty_at))
                .limit(1)
            )
            if session.get_bind().dialect.name == "postgresql":
                candidate = candidate.with_for_update(skip_locked=True)
            state = DetectState
            row = session.execute(
                update(state)
                .where(state.series_id == candidate.scalar_subquery())
                .values(
                    claimed_from=least(
                        func.coalesce(state.claimed_from, state.dirty_from),
                        func.coalesce(state.dirty_from, state.claimed_from),
                    ),
                    claimed_until=greatest(
                        func.coalesce(state.claimed_until, state.dirty_until),
                        func.coalesce(state.dirty_until, state.claimed_until),
                    ),
                    claimed_at=least(
                        func.coalesce(state.claimed_at, state.dirty_at),
                        func.coalesce(state.dirty_at, state.claimed_at),
                    ),
                    dirty_from=None,
                    dirty_until=None,
                    dirty_at=None,
                    lease_owner=self.name,
                    lease_expires_at=lease_until,
                )
                .returning(
                    state.series_id, state.claimed_from, state.claimed_until, state.claimed_at
                )
                .execution_options(synchronize_session=False)
            ).one_or_none()
        if row is None:
            return None
        series_id, start, until, since = row
        assert start is not None and until is not None  # a claimed row had a marked range
        return Claim(series_id=series_id, start=start, until=until, since=since or now)

    def _release(self, series_id: int, *, retry_in: float) -> None:
        """Give a series back after a failed pass; it is tried again after `retry_in` s."""
        try:
            with self.sessions() as session, session.begin():
                session.execute(
                    update(DetectState)
                    .where(DetectState.series_id == series_id, DetectState.lease_owner == self.name)
                    .values(
                        lease_owner=None,
                        lease_expires_at=utcnow() + timedelta(seconds=retry_in),
                    )
                )
        except SQLAlchemyError as exc:  # the lease then runs out by itself
            log.warning("detector could not release series %d: %s", series_id, exc)

    # -- one pass ----------------------------------------------------------------------------
    def process(self, claim: Claim) -> Pass:
        result = Pass()
        with self.sessions() as session:
            series = session.get(Series, claim.series_id)
            if series is None:
                return result
            result.series_name = series.name
            active = self._active_model(session, series) if series.detect else None
            cut = self._cut(session, series, claim) if active is not None else None
            if active is None or cut is None:
                self._commit(claim, result, lambda s: None, done=True, resume_from=None)
                return result
            version, model = active
            t = series.window_size
            limit = self.settings.detect_max_windows
            starts = cut.starts[:limit]
            capped = len(cut.starts) > limit or len(cut.ts) >= limit * series.stride + t
            ts_windows = gather(cut.ts, starts, t)  # (N, T)
            value_windows = gather(cut.values, starts, t)  # (N, T, F)
            first, last = int(ts_windows[0, 0]), int(ts_windows[-1, 0])
            stored = {
                row.start_ts: (row.seq, row.digest, row.is_anomaly)
                for row in session.execute(
                    select(
                        WindowScore.start_ts,
                        WindowScore.seq,
                        WindowScore.digest,
                        WindowScore.is_anomaly,
                    ).where(
                        WindowScore.series_id == series.id,
                        WindowScore.start_ts >= first,
                        WindowScore.start_ts <= last,
                    )
                )
            }
        gap_us = gap_limit_us(
            cut.ts,
            max_gap=series.max_gap,
            factor=self.settings.max_gap_factor,
            interval_us=recorded_interval(model),
        )
        missing = missing_fraction(value_windows)
        to_score: list[int] = []
        reseq: list[tuple[int, int]] = []
        grid: list[int] = []
        stop = len(starts)
        for k in range(len(starts)):
            start_ts, seq = int(ts_windows[k, 0]), cut.seq0 + k
            digest = window_digest(ts_windows[k], value_windows[k])
            known = stored.get(start_ts)
            if known is not None and known[1] == digest:
                if known[0] == seq:
                    if start_ts > claim.until:  # past the change, back in step: the rest holds
                        stop = k
                        break
                else:
                    reseq.append((start_ts, seq))
                grid.append(start_ts)
                continue
            grid.append(start_ts)
            spans_gap = gap_us is not None and t > 1 and int(np.diff(ts_windows[k]).max()) > gap_us
            # A window across a long gap is never scored; one with too many missing values
            # waits until they are written (the values of a late batch re-mark it).
            if not spans_gap and missing[k] <= self.settings.max_missing_fraction:
                to_score.append(k)
        synced = stop < len(starts)
        done = synced or not capped
        at_end = done and not synced  # the cut reached the newest points
        # Points written into a hole move every later window on the grid: renumbered, or
        # off the grid (stale, cut anew). A pass that stops before the end leaves the rest
        # of the windows to the next passes, up to the last one (`_end_lease`).
        on_grid = set(grid)
        moved = bool(reseq) or any(ts <= grid[-1] and ts not in on_grid for ts in stored if grid)
        try:
            scored = (
                self._score(
                    series_info=(series.threshold_quantile, series.channels),
                    model=model,
                    windows=value_windows[to_score],
                )
                if to_score
                else None
            )
        except (ModelError, ValueError) as exc:  # trying again would fail again: drop the marks
            log.error("detector cannot score series %s: %s", series.name, exc)
            self._commit(claim, result, lambda s: None, done=True, resume_from=None)
            return result

        def write(session: Session) -> None:
            now = utcnow()
            owned = session.get(Series, claim.series_id)
            assert owned is not None
            existing = (
                {
                    row.start_ts: row
                    for row in session.scalars(
                        select(WindowScore).where(
                            WindowScore.series_id == claim.series_id,
                            WindowScore.start_ts.in_([int(ts_windows[k, 0]) for k in to_score]),
                        )
                    )
                }
                if to_score
                else {}
            )
            changed: list[WindowScore] = []
            for i, k in enumerate(to_score):
                assert scored is not None
                start_ts = int(ts_windows[k, 0])
                row = existing.get(start_ts)
                if row is None:
                    row = WindowScore(series_id=claim.series_id, start_ts=start_ts)
                    session.add(row)
                    result.new += 1
                    was_flagged = False
                else:
                    result.rescored += 1
                    was_flagged = row.is_anomaly
                row.end_ts = int(ts_windows[k, -1])
                row.seq = cut.seq0 + k
                row.digest = window_digest(ts_windows[k], value_windows[k])
                row.model_version = version
                row.raw_score = scored["raw"][i]
                row.score = scored["score"][i]
                row.adjusted_score = scored["adjusted"][i]
                row.threshold = scored["threshold"]
                row.is_anomaly = scored["flagged"][i]
                row.quality = scored["quality"][i]
                row.contributions = scored["contributions"][i]
                row.scored_at = now
                if row.is_anomaly and not was_flagged:
                    result.newly_flagged += 1
                changed.append(row)
            for start_ts, seq in reseq:
                session.execute(
                    update(WindowScore)
                    .where(
                        WindowScore.series_id == claim.series_id, WindowScore.start_ts == start_ts
                    )
                    .values(seq=seq)
                )
            handled_to = grid[-1] if grid else None
            removed = 0
            if handled_to is not None:
                stale = delete(WindowScore).where(
                    WindowScore.series_id == claim.series_id,
                    WindowScore.start_ts >= grid[0],
                    WindowScore.start_ts.not_in(grid),
                )
                if not at_end:
                    stale = stale.where(WindowScore.start_ts <= handled_to)
                removed = session.execute(stale).rowcount  # type: ignore[attr-defined]
            session.flush()
            if moved or removed:
                if not done and handled_to is not None:
                    _renumber_rest(session, owned, cut=cut, after=handled_to)
                renumber_alarms(session=session, series_id=claim.series_id, since_ts=grid[0])
            newest = session.scalar(
                select(func.max(WindowScore.seq)).where(WindowScore.series_id == claim.series_id)
            )
            changes = update_alarms(
                session=session,
                series=owned,
                changed=changed,
                newest_seq=newest,
                settings=self.settings,
            )
            result.opened = [a.kind for a in changes.opened]
            result.closed = [a.kind for a in changes.closed]

        resume_from = None
        if not done:
            last_k = len(starts) - 1
            resume_from = int(ts_windows[last_k, -1]) + 1
        self._commit(
            claim, result, write, done=done, resume_from=resume_from, rest_moved=moved and not done
        )
        return result

    def _commit(
        self,
        claim: Claim,
        result: Pass,
        write: Any,
        *,
        done: bool,
        resume_from: int | None,
        rest_moved: bool = False,
    ) -> None:
        """Write the pass and end the lease in one transaction (nothing if the lease is lost).

        NOTE: on Postgres the series' DetectState row is updated last, right before the
        commit. Every ingestion transaction of the series marks that row after upserting its
        points, so a pass that locked it first held it for all of its writes, and each batch
        waited there while holding its own points' row locks, which the next batches waited
        for. The lease check comes last too: a pass that lost its lease still writes nothing,
        as its whole transaction rolls back. SQLite has one write lock for the whole database,
        not row locks, so the order changes nothing there: the update stays first, as the
        transaction's first write, which takes that lock.
        """
        result.done = done
        with self.sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                owner = session.scalar(
                    select(DetectState.lease_owner).where(DetectState.series_id == claim.series_id)
                )
                if owner != self.name:  # a plain read: no need to write what would be dropped
                    raise LeaseLost
                write(session)
                self._end_lease(session, claim, resume_from, rest_moved=rest_moved)
            else:
                self._end_lease(session, claim, resume_from, rest_moved=rest_moved)
                write(session)
        self._observe(claim, result)

    def _end_lease(
        self, session: Session, claim: Claim, resume_from: int | None, *, rest_moved: bool = False
    ) -> None:
        """Give the series back, with the rest of a large change marked again (with
        `rest_moved`, up to the series' last stored window, as all of them moved); LeaseLost
        if another detector holds it now."""
        least, greatest = _least_greatest(session)
        state = DetectState
        values: dict[str, Any] = {
            "claimed_from": None,
            "claimed_until": None,
            "claimed_at": None,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if resume_from is not None:  # the rest of a large change, in the next pass
            values["dirty_from"] = least(func.coalesce(state.dirty_from, resume_from), resume_from)
            until: Any = claim.until
            if rest_moved:
                last_end = (
                    select(func.max(WindowScore.end_ts))
                    .where(WindowScore.series_id == claim.series_id)
                    .scalar_subquery()
                )
                until = greatest(func.coalesce(last_end, claim.until), claim.until)
            values["dirty_until"] = greatest(func.coalesce(state.dirty_until, until), until)
            values["dirty_at"] = least(func.coalesce(state.dirty_at, claim.since), claim.since)
        held = session.execute(
            update(state)
            .where(state.series_id == claim.series_id, state.lease_owner == self.name)
            .values(**values)
            .returning(state.series_id)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if held is None:
            raise LeaseLost

    def _observe(self, claim: Claim, result: Pass) -> None:
        if not result.series_name:
            return
        metrics = detection_metrics(result.series_name)
        if result.new:
            metrics.windows_new.inc(result.new)
        if result.rescored:
            metrics.windows_rescored.inc(result.rescored)
        if result.newly_flagged:
            metrics.windows_flagged.inc(result.newly_flagged)
        for kind in result.opened or []:
            metrics.opened(kind).inc()
        for kind in result.closed or []:
            metrics.closed(kind).inc()
        if result.done and (result.new or result.rescored):
            lag = (utcnow() - claim.since).total_seconds()
            metrics.lag.observe(max(lag, 0.0))

    # -- helpers -----------------------------------------------------------------------------
    def _active_model(self, session: Session, series: Series) -> tuple[int, TrainedModel] | None:
        row = session.execute(
            select(ModelVersion.version, ModelVersion.sha256).where(
                ModelVersion.series_id == series.id, ModelVersion.status == MODEL_ACTIVE
            )
        ).one_or_none()
        if row is None:
            return None
        version, sha256 = row
        cached = self._models.get(series.id, version)
        if cached is not None:
            return cached
        blob = session.scalar(
            select(ModelVersion.artifact).where(
                ModelVersion.series_id == series.id, ModelVersion.version == version
            )
        )
        if blob is None:
            return None
        try:
            model = load_artifact(blob, sha256, what=f"series {series.name} version {version}")
        except ModelError as exc:
            log.error("detector cannot load series %s version %d: %s", series.name, version, exc)
            return None
        if not model.net.has_decoder:  # an ES model has no anomaly scores
            return None
        self._models.put(series.id, version, model)
        return version, model

    def _cut(self, session: Session, series: Series, claim: Claim) -> Cut | None:
        """The points from the first window to (re)consider on, and that window's position."""
        anchor = self._anchor(session, series, claim.start)
        if anchor is None:
            return None
        start_ts, seq0 = anchor
        t, stride = series.window_size, series.stride
        limit = self.settings.detect_max_windows * stride + t
        rows = session.execute(
            select(Point.ts, Point.values)
            .where(Point.series_id == series.id, Point.ts >= start_ts)
            .order_by(Point.ts)
            .limit(limit)
        ).all()
        if len(rows) < t:
            return None
        f = len(series.channels)
        ts = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        values = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f8").reshape(len(rows), f)
        # NOTE: the grid counts points from the series' first one, gaps or not, so that a
        # window's position never moves when points arrive after it; windows that span a gap
        # longer than the series' limit are left unscored (process), as training leaves them.
        starts = np.arange(0, len(rows) - t + 1, stride, dtype=np.int64)
        return Cut(ts=ts, values=values, starts=starts, seq0=seq0)

    def _anchor(
        self, session: Session, series: Series, changed_from: int
    ) -> tuple[int, int] | None:
        """(start timestamp, position) of the first window a change at `changed_from` may touch,
        on the series' grid."""
        t, stride = series.window_size, series.stride
        before = session.execute(
            select(WindowScore.start_ts, WindowScore.seq)
            .where(WindowScore.series_id == series.id, WindowScore.end_ts < changed_from)
            .order_by(WindowScore.start_ts.desc())
            .limit(1)
        ).one_or_none()
        if before is not None:  # its points are all older than the change: still in place
            return int(before[0]), int(before[1])
        first = session.execute(
            select(WindowScore.start_ts, WindowScore.seq)
            .where(WindowScore.series_id == series.id)
            .order_by(WindowScore.start_ts)
            .limit(1)
        ).one_or_none()
        points = select(Point.ts).where(Point.series_id == series.id)
        if first is None:  # the first windows of the series: the grid starts at its first point
            older = (
                session.scalar(
                    select(func.count())
                    .select_from(Point)
                    .where(Point.series_id == series.id, Point.ts < changed_from)
                )
                or 0
            )
            offset = -(-max(0, older - t + 1) // stride) * stride
            found = session.scalar(points.order_by(Point.ts).offset(offset).limit(1))
            return None if found is None else (int(found), offset // stride)
        first_ts, first_seq = int(first[0]), int(first[1])
        if changed_from >= first_ts:
            return first_ts, first_seq
        # Points written before the first stored window: the grid extends backwards from it.
        between = (
            session.scalar(
                select(func.count())
                .select_from(Point)
                .where(Point.series_id == series.id, Point.ts >= changed_from, Point.ts < first_ts)
            )
            or 0
        )
        steps = (between + t - 1) // stride
        while steps > 0:
            found = session.scalar(
                points.where(Point.ts < first_ts)
                .order_by(Point.ts.desc())
                .offset(steps * stride - 1)
                .limit(1)
            )
            if found is not None:
                return int(found), first_seq - steps
            older = (
                session.scalar(
                    select(func.count())
                    .select_from(Point)
                    .where(Point.series_id == series.id, Point.ts < first_ts)
                )
                or 0
            )
            steps = min(steps - 1, older // stride)
        return first_ts, first_seq

    def _score(
        self,
        *,
        series_info: tuple[float, list[str]],
        model: TrainedModel,
        windows: np.ndarray,
    ) -> dict[str, Any]:
        quantile, channels = series_info
        samples = serving_samples(model, self.settings.score_samples)
        threshold = model.threshold(quantile, n_samples=samples)
        raw: list[float] = []
        score: list[float] = []
        adjusted: list[float] = []
        flagged: list[bool] = []
        quality: list[list[dict[str, str]]] = []
        contributions: list[list[float]] = []
        x = prepare_for_scoring(
            windows.astype(np.float32), fill=model.normalisation.mean, max_missing=1.0
        ).windows  # the caller left out windows with too much missing; impute the rest
        for lo in range(0, len(x), SCORE_CHUNK):
            batch = model.score(x[lo : lo + SCORE_CHUNK], n_samples=samples)
            raw += batch.raw_score.tolist()
            score += batch.score.tolist()
            adjusted += batch.adjusted_score.tolist()
            flagged += ((batch.adjusted_score > threshold) | batch.quality.any(axis=1)).tolist()
            quality += describe(batch.quality, tuple(channels))
            contributions += batch.channel_contributions.tolist()
        return {
            "raw": raw,
            "score": score,
            "adjusted": adjusted,
            "threshold": float(threshold),
            "flagged": flagged,
            "quality": quality,
            "contributions": contributions,
        }


class DetectorPool:
    """The detector threads of one API process (VIGIL_DETECT_THREADS), sharing a model cache.

    Each thread claims its own series through the lease, so one series is never scored by two
    at once, while a pass that waits on the database or on the model of one series no longer
    holds up every other series: with one thread, 100 series streaming at 10 Hz lagged 6.7 s
    (p99) although the process used a third of the two cores (benchmarks/RESULTS.md)."""

    def __init__(self, settings: Settings, *, sessions: sessionmaker[Session]) -> None:
        models = ModelCache(settings.model_cache_size)
        base = f"{socket.gethostname()}:{os.getpid()}:detect"
        self.detectors = [
            Detector(settings, sessions=sessions, name=f"{base}:{i}", models=models)
            for i in range(settings.detect_threads)
        ]

    def start(self) -> None:
        for detector in self.detectors:
            detector.start()

    def stop(self, timeout: float = 10.0) -> None:
        for detector in self.detectors:
            detector.stop_event.set()
            detector.wake()
        for detector in self.detectors:
            detector.stop(timeout)

    def wake(self) -> None:
        for detector in self.detectors:
            detector.wake()
