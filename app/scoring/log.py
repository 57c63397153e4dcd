"""The score log: every scored window, kept for feedback, written in bulk off the request path.

It lives where the model runs: in the scoring child when there is one (`app/scoring/process.py`), so
that the API process's event loop never builds a row or shares its GIL with a database
driver, else on the API process's scoring thread. Either way `log_scores` decides, beside the
model call, the id of each window and whether it is an alarm, and the client is told exactly
what was logged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import ScoreRecord, Series
from models import ScoreBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """How one request's windows are logged: the alarm threshold its client is told (the
    series' quantile of its model's calibration), and each window's time span when the
    windows were cut from stored points."""

    threshold: float
    spans: Sequence[tuple[int, int]] | None = None


@dataclass(frozen=True)
class Scored:
    """One request's windows as scored and logged: the id each window is logged under and
    whether it is an alarm (adjusted score above the threshold)."""

    batch: ScoreBatch
    ids: list[uuid.UUID]
    flagged: list[bool]


NO_SPAN = np.iinfo(np.int64).min
"""A window's span start and end, in the int64 arrays that carry spans, when it has none."""


def spans_array(records: Sequence[tuple[int, Record]]) -> np.ndarray | None:
    """The spans of a batch's windows, (n, 2) int64 with NO_SPAN for windows without one, from
    (window count, record) per request; None when no window has one."""
    if all(record.spans is None for _, record in records):
        return None
    parts = [
        np.asarray(record.spans, dtype=np.int64).reshape(count, 2)
        if record.spans is not None
        else np.full((count, 2), NO_SPAN, dtype=np.int64)
        for count, record in records
    ]
    return np.concatenate(parts)


def log_scores(
    score_log: ScoreLog,
    key: tuple[int, int],
    windows: np.ndarray,
    batch: ScoreBatch,
    thresholds: np.ndarray,
    spans: np.ndarray | None,
) -> tuple[list[uuid.UUID], np.ndarray]:
    """Log a batch of (series id, model version) `key`: the windows' ids and alarm flags,
    each window against its own request's threshold."""
    flagged = (batch.adjusted_score > thresholds) | batch.quality.any(axis=1)
    rows = None if spans is None else [None if s == NO_SPAN else (s, e) for s, e in spans.tolist()]
    ids = score_log.append(
        series_id=key[0],
        version=key[1],
        windows=windows,
        batch=batch,
        flagged=flagged.tolist(),
        spans=rows,
    )
    return ids, flagged


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
        spans: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[uuid.UUID]:
        """Buffer scored windows; `flagged` is what the client was told, `spans` each window's
        (start, end) or None."""
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
                "start_ts": span[0] if span else None,
                "end_ts": span[1] if span else None,
                "window": blobs[i].tobytes(),
                "raw_score": raw[i],
                "adjusted_score": adjusted[i],
                "is_anomaly": flagged[i],
            }
            for i, span in enumerate(spans if spans is not None else [None] * len(windows))
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
                try:
                    self._write(rows)
                except (IntegrityError, psycopg.errors.ForeignKeyViolation):
                    # A series was deleted after these windows were scored: its rows go.
                    rows = self._of_live_series(rows)
                    self._write(rows)
            except (SQLAlchemyError, psycopg.Error) as exc:
                with self._lock:
                    self._rows[:0] = rows
                if isinstance(exc, psycopg.Error):  # the raw COPY's: one kind for callers
                    raise DBAPIError(_PG_COPY_SCORES, None, exc) from exc
                raise
            return len(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                _copy_postgres(session, rows)
            else:
                session.execute(insert(ScoreRecord), rows)

    def _of_live_series(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows whose series still exists."""
        wanted = {row["series_id"] for row in rows}
        with self._sessions() as session:
            live = set(session.scalars(select(Series.id).where(Series.id.in_(wanted))))
        if len(live) < len(wanted):
            log.info("score log: dropped the scores of deleted series %s", sorted(wanted - live))
        return [row for row in rows if row["series_id"] in live]

    def flush_or_warn(self) -> None:
        """Flush; a failure is logged, and the rows wait for the next flush."""
        try:
            self.flush()
        except SQLAlchemyError as exc:
            log.warning(
                "score log flush failed, %d rows kept for retry: %s",
                self.pending,
                exc.__class__.__name__,
            )

    async def run(self, interval: float) -> None:
        """Flush every `interval` seconds, on a thread, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.flush_or_warn)

    def run_until(self, stop: threading.Event, interval: float) -> None:
        """Flush every `interval` seconds on the calling thread until `stop` is set."""
        while not stop.wait(interval):
            self.flush_or_warn()


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
