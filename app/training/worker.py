"""The training worker: claims queued jobs, trains, stores and (maybe) activates versions.

Any number of workers may run against Postgres. A job is claimed with
`FOR UPDATE SKIP LOCKED` and held by a lease that a heartbeat thread renews; a job whose
worker died is claimed again once its lease has expired, up to `job_max_attempts` times.
A new version is written and activated in one transaction, so there is never a
half-activated model, and a partial unique index forbids two active versions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import (
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    MODEL_ACTIVE,
    MODEL_CANDIDATE,
    MODEL_RETIRED,
    IdempotencyRecord,
    Job,
    ModelVersion,
    Series,
)
from app.db.session import make_engine, make_sessionmaker
from app.detection import events
from app.detection.webhooks import Deliverer, purge_deliveries
from app.idempotency import TTL as IDEMPOTENCY_TTL
from app.metrics import JOBS, TRAINING_DURATION
from app.ratelimit import purge_windows
from app.scoring.registry import load_artifact
from app.services.retention import enforce_retention
from app.training.jobs import arm_retrain
from app.training.pipeline import SAMPLING_INTERVAL_KEY, Outcome, build_dataset, train_version
from app.training.versions import count_activation, lock_series
from models import ModelError, Progress, TrainedModel, TrainingCancelled

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 300.0


class LeaseLost(Exception):
    """Another worker owns the job now: this one must drop its result."""


@dataclass(frozen=True)
class Claimed:
    job_id: int
    series_id: int
    attempt: int


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        sessions: sessionmaker[Session] | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions or make_sessionmaker(
            make_engine(settings.database_url, role="worker")
        )
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self) & 0xFFFF:x}"
        self.stop_event = threading.Event()
        self._last_housekeeping = 0.0
        self.deliverer = Deliverer(settings, sessions=self.sessions, name=self.name)
        # Export every job outcome from the start, so increase() sees the first failure.
        for status in (JOB_SUCCEEDED, JOB_FAILED):
            JOBS.labels(status)

    # -- the loop ----------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("worker %s started", self.name, extra={"worker": self.name})
        self.deliverer.start(self.stop_event)  # webhooks go out while a job trains
        while not self.stop_event.is_set():
            try:
                ran = self.run_once()
                self._housekeeping()
            except SQLAlchemyError as exc:
                log.warning("worker database error: %s; retrying", exc.__class__.__name__)
                ran = None
            if ran is None:
                self.stop_event.wait(self.settings.job_poll_seconds)
        self.deliverer.join(timeout=self.settings.webhook_timeout_seconds * 2)
        log.info("worker %s stopped", self.name, extra={"worker": self.name})

    def run_once(self) -> int | None:
        """Claim one job and run it to an end. Returns its id, or None if none was queued."""
        claimed = self.claim()
        if claimed is None:
            return None
        self.execute(claimed)
        return claimed.job_id

    # -- claiming ----------------------------------------------------------------------------
    def claim(self) -> Claimed | None:
        now = utcnow()
        lease_until = now + timedelta(seconds=self.settings.job_lease_seconds)
        with self.sessions() as session, session.begin():
            self._fail_exhausted(session, now)
            candidate = (
                select(Job.id)
                .where(
                    or_(
                        (Job.status == JOB_QUEUED)
                        & or_(Job.not_before.is_(None), Job.not_before <= now),
                        (Job.status == JOB_RUNNING) & (Job.lease_expires_at < now),
                    )
                )
                .order_by(Job.created_at, Job.id)
                .limit(1)
            )
            if session.get_bind().dialect.name == "postgresql":
                candidate = candidate.with_for_update(skip_locked=True)
            row = session.execute(
                update(Job)
                .where(Job.id == candidate.scalar_subquery())
                .values(
                    status=JOB_RUNNING,
                    lease_owner=self.name,
                    lease_expires_at=lease_until,
                    attempts=Job.attempts + 1,
                    started_at=func.coalesce(Job.started_at, now),
                    error=None,
                )
                .returning(Job.id, Job.series_id, Job.attempts)
            ).one_or_none()
            if row is not None:
                # Labels from now on count towards the next retrain: this one may miss them.
                session.execute(
                    update(Series)
                    .where(Series.id == row[1])
                    .values(labels_since_train=0, updated_at=Series.updated_at)
                )
        if row is None:
            return None
        log.info(
            "worker %s claimed job %d (attempt %d)",
            self.name,
            row[0],
            row[2],
            extra={"worker": self.name, "job_id": row[0], "series_id": row[1]},
        )
        return Claimed(job_id=row[0], series_id=row[1], attempt=row[2])

    def _fail_exhausted(self, session: Session, now: object) -> None:
        result = session.execute(
            update(Job)
            .where(
                Job.status == JOB_RUNNING,
                Job.lease_expires_at < now,
                Job.attempts >= self.settings.job_max_attempts,
            )
            .values(
                status=JOB_FAILED,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error=(
                    f"abandoned: its worker stopped responding "
                    f"{self.settings.job_max_attempts} times"
                ),
            )
            .returning(Job.id, Job.series_id, Job.error)
        ).all()
        for job_id, series_id, error in result:
            events.emit(
                session=session,
                event=events.JOB_FAILED,
                data={"job_id": job_id, "series_id": series_id, "error": error},
            )
            JOBS.labels(JOB_FAILED).inc()

    # -- running -----------------------------------------------------------------------------
    def execute(self, claimed: Claimed) -> None:
        started = time.monotonic()
        context = {"job_id": claimed.job_id, "series_id": claimed.series_id, "worker": self.name}
        heartbeat = _Heartbeat(self, claimed.job_id)
        heartbeat.start()
        try:
            outcome = self._train(claimed, heartbeat)
            version = self._store(claimed, outcome)
        except TrainingCancelled:
            self._hand_back(claimed.job_id)
            return
        except LeaseLost:
            log.warning(
                "job %d: %s; result dropped",
                claimed.job_id,
                "its series was deleted"
                if self._series_gone(claimed.series_id)
                else "lease lost to another worker",
                extra=context,
            )
            return
        except ModelError as exc:
            self._fail(claimed.job_id, str(exc))
            return
        except Exception as exc:
            log.exception("job %d failed", claimed.job_id, extra=context)
            self._fail(claimed.job_id, f"internal error: {exc.__class__.__name__}")
            return
        finally:
            heartbeat.stop()
            self._follow_up(claimed.series_id)
        TRAINING_DURATION.observe(time.monotonic() - started)
        JOBS.labels(JOB_SUCCEEDED).inc()
        log.info(
            "job %d succeeded: version %d",
            claimed.job_id,
            version,
            extra={**context, "model_version": version},
        )

    def _train(self, claimed: Claimed, heartbeat: _Heartbeat) -> Outcome:
        with self.sessions() as session:
            series = session.get(Series, claimed.series_id)
            if series is None:
                raise ModelError(f"series {claimed.series_id} no longer exists")
            active = self._active_model(session, series.id)
            dataset = build_dataset(
                session=session,
                series=series,
                settings=self.settings,
                previous=active.classes if active else (),
                seed=claimed.job_id,
            )
            session.expunge(series)

        def progress(update_: Progress) -> None:
            heartbeat.report(update_.step / update_.steps if update_.steps else 0.0)

        def should_stop() -> bool:
            if heartbeat.lost.is_set():
                raise LeaseLost
            return self.stop_event.is_set()

        outcome = train_version(
            dataset=dataset,
            series=series,
            settings=self.settings,
            active=active,
            seed=claimed.job_id,
            progress=progress,
            should_stop=should_stop,
        )
        if dataset.interval_us is not None:  # scoring derives the gap limit from it
            outcome.model.metadata[SAMPLING_INTERVAL_KEY] = str(dataset.interval_us)
        return outcome

    def _series_gone(self, series_id: int) -> bool:
        with self.sessions() as session:
            return session.get(Series, series_id) is None

    def _active_model(self, session: Session, series_id: int) -> TrainedModel | None:
        row = session.execute(
            select(ModelVersion.version, ModelVersion.artifact, ModelVersion.sha256).where(
                ModelVersion.series_id == series_id, ModelVersion.status == MODEL_ACTIVE
            )
        ).one_or_none()
        if row is None:
            return None
        return load_artifact(row[1], row[2], what=f"series {series_id} version {row[0]}")

    def _store(self, claimed: Claimed, outcome: Outcome) -> int:
        now = utcnow()
        with self.sessions() as session, session.begin():
            job_query = select(Job).where(Job.id == claimed.job_id)
            if session.get_bind().dialect.name == "postgresql":
                job_query = job_query.with_for_update()
            job = session.scalar(job_query)
            if job is None or job.lease_owner != self.name or job.status != JOB_RUNNING:
                raise LeaseLost
            number = (
                session.scalar(
                    select(func.max(ModelVersion.version)).where(
                        ModelVersion.series_id == claimed.series_id
                    )
                )
                or 0
            ) + 1
            blob = outcome.model.to_bytes(
                metadata={
                    **outcome.model.metadata,
                    "series_id": str(claimed.series_id),
                    "version": str(number),
                }
            )
            if outcome.activate:
                lock_series(session=session, series_id=claimed.series_id)
                session.execute(
                    update(ModelVersion)
                    .where(
                        ModelVersion.series_id == claimed.series_id,
                        ModelVersion.status == MODEL_ACTIVE,
                    )
                    .values(status=MODEL_RETIRED)
                )
                count_activation(session)
            session.add(
                ModelVersion(
                    series_id=claimed.series_id,
                    version=number,
                    status=MODEL_ACTIVE if outcome.activate else MODEL_CANDIDATE,
                    artifact=blob,
                    sha256=hashlib.sha256(blob).hexdigest(),
                    metrics=dict(outcome.metrics),
                    note=outcome.note,
                    job_id=claimed.job_id,
                    trained_at=now,
                    activated_at=now if outcome.activate else None,
                )
            )
            if outcome.activate:
                events.emit(
                    session=session,
                    event=events.MODEL_ACTIVATED,
                    data={
                        "series_id": claimed.series_id,
                        "version": number,
                        "activated_at": now,
                        "by": f"training job {claimed.job_id}",
                    },
                )
            job.status = JOB_SUCCEEDED
            job.progress = 1.0
            job.model_version = number
            job.metrics = {**outcome.metrics, "activated": outcome.activate}
            if outcome.note:
                job.metrics["note"] = outcome.note
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
        return number

    def _follow_up(self, series_id: int) -> None:
        """Queue the retrain that labels posted while this job ran have armed."""
        try:
            with self.sessions() as session, session.begin():
                series = session.get(Series, series_id)
                if series is not None and series.labels_since_train > 0:
                    arm_retrain(
                        session=session,
                        series=series,
                        settings=self.settings,
                        count=series.labels_since_train,
                    )
        except SQLAlchemyError as exc:  # the next label arms it again
            log.warning("job follow-up for series %d failed: %s", series_id, exc)

    def _fail(self, job_id: int, error: str) -> None:
        with self.sessions() as session, session.begin():
            series_id = session.scalar(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == self.name)
                .values(
                    status=JOB_FAILED,
                    error=error,
                    finished_at=utcnow(),
                    lease_owner=None,
                    lease_expires_at=None,
                )
                .returning(Job.series_id)
            )
            if series_id is not None:
                events.emit(
                    session=session,
                    event=events.JOB_FAILED,
                    data={"job_id": job_id, "series_id": series_id, "error": error},
                )
        JOBS.labels(JOB_FAILED).inc()
        log.warning("job %d failed: %s", job_id, error, extra={"job_id": job_id})

    def _hand_back(self, job_id: int) -> None:
        """Shutdown during training: put the job back for another worker, uncounted."""
        with self.sessions() as session, session.begin():
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == self.name)
                .values(
                    status=JOB_QUEUED,
                    progress=0.0,
                    attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        log.info("job %d handed back to the queue", job_id, extra={"job_id": job_id})

    # -- housekeeping ------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now_mono = time.monotonic()
        if now_mono - self._last_housekeeping < HOUSEKEEPING_SECONDS:
            return
        self._last_housekeeping = now_mono
        now = utcnow()
        enforce_retention(sessions=self.sessions, settings=self.settings, now=now)
        with self.sessions() as session, session.begin():
            session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.created_at < now - IDEMPOTENCY_TTL
                )
            )
            purge_windows(session=session)
            purge_deliveries(session=session, settings=self.settings)


class _Heartbeat:
    """Renews a job's lease and records progress from a thread of its own, so that a long
    epoch cannot let the lease lapse. Sets `lost` if another worker has taken the job."""

    def __init__(self, worker: Worker, job_id: int) -> None:
        self.worker = worker
        self.job_id = job_id
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._progress: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def report(self, progress: float) -> None:
        self._progress = progress
        self.renew()

    def _run(self) -> None:
        interval = max(0.05, self.worker.settings.job_lease_seconds / 3)
        while not self._stop.wait(interval):
            self.renew()

    def renew(self) -> None:
        settings = self.worker.settings
        values: dict[str, object] = {
            "lease_expires_at": utcnow() + timedelta(seconds=settings.job_lease_seconds)
        }
        if self._progress is not None:
            values["progress"] = round(min(self._progress, 0.99), 4)
        try:
            with self.worker.sessions() as session, session.begin():
                result = session.execute(
                    update(Job)
                    .where(
                        Job.id == self.job_id,
                        Job.lease_owner == self.worker.name,
                        Job.status == JOB_RUNNING,
                    )
                    .values(**values)
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    self.lost.set()
        except SQLAlchemyError as exc:
            # The lease runs on; if the database stays away long enough, another worker
            # takes the job and this one's result is dropped at store time.
            log.warning(
                "job %d: lease renewal failed: %s",
                self.job_id,
                exc.__class__.__name__,
                extra={"job_id": self.job_id},
            )
