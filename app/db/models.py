"""The relational schema. Only Alembic creates it (see migrations/); this module describes it.

Timestamps of sensor data are stored as integer microseconds since the Unix epoch (UTC):
the same on every backend, cheap to index and to COPY, and exact.
Point values are stored as one little-endian float64 blob per row, one value per channel.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, utcnow
from models import BUILTIN_CLASSES

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_STATUSES = (JOB_QUEUED, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED)

MODEL_ACTIVE = "active"
MODEL_CANDIDATE = "candidate"
MODEL_RETIRED = "retired"

BUILTIN_CLASSES_KINDS: dict[str, str] = {spec.name: spec.kind for spec in BUILTIN_CLASSES}
"""Every series has these classes (name -> kind); operators add their own next to them."""


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the key: keys are 256-bit random tokens, so a fast hash is safe at rest."""
    prefix: Mapped[str] = mapped_column(String(12))
    """The key's first characters, shown in listings so operators can tell keys apart."""
    scopes: Mapped[list[str]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    """The key stops working at this instant (None: never)."""
    series_ids: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    """The only series the key may use (None: every series)."""


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    channels: Mapped[list[str]] = mapped_column()
    window_size: Mapped[int] = mapped_column(Integer)
    stride: Mapped[int] = mapped_column(Integer)
    classes: Mapped[dict[str, str]] = mapped_column()
    """Class name -> kind (`normal` or `anomaly`), built-in classes included."""
    threshold_quantile: Mapped[float] = mapped_column(Float, default=0.99)
    labels_since_train: Mapped[int] = mapped_column(Integer, default=0)
    training: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """Per-series training options (schemas/series.py TrainingOptions); null: the defaults."""
    max_gap: Mapped[float | None] = mapped_column(Float, default=None)
    """Seconds: no window spans a longer gap between points (None: derived, app/timegaps.py)."""
    detect: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    """Score the windows that ingestion adds with the active model (app/detection/)."""
    alarm_merge_gap: Mapped[int] = mapped_column(Integer, default=2, server_default=text("2"))
    """Unflagged windows between two flagged ones that still leave them in one alarm."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Point(Base):
    __tablename__ = "points"

    series_id: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True
    )
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    """Microseconds since the Unix epoch, UTC."""
    values: Mapped[bytes] = mapped_column(LargeBinary)
    """Little-endian float64, one per channel, in the series' channel order."""


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_series_live", "series_id", "deleted_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    start_ts: Mapped[int | None] = mapped_column(BigInteger)
    end_ts: Mapped[int | None] = mapped_column(BigInteger)
    label: Mapped[str] = mapped_column(String(100))
    score_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    """Set for feedback on a scored window; the window itself is in `scores`."""
    model_version: Mapped[int | None] = mapped_column(Integer, default=None)
    """The version whose score the feedback is about."""
    author: Mapped[str | None] = mapped_column(String(200), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    job_id: Mapped[int | None] = mapped_column(Integer, default=None)
    """The retrain this label queued or joined, if any."""


class ScoreRecord(Base):
    """A scored window, kept for a retention period so that feedback can point at it."""

    __tablename__ = "scores"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    start_ts: Mapped[int | None] = mapped_column(BigInteger, default=None)
    end_ts: Mapped[int | None] = mapped_column(BigInteger, default=None)
    window: Mapped[bytes] = mapped_column(LargeBinary)
    """Little-endian float32, shape (window_size, channels)."""
    raw_score: Mapped[float] = mapped_column(Float)
    adjusted_score: Mapped[float] = mapped_column(Float)
    is_anomaly: Mapped[bool] = mapped_column(Boolean)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        Index("uq_model_versions_series_version", "series_id", "version", unique=True),
        # At most one active version per series, enforced by the database itself.
        Index(
            "uq_model_versions_one_active",
            "series_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column()
    note: Mapped[str | None] = mapped_column(Text, default=None)
    """Why a candidate was not activated, or who rolled back to it."""
    job_id: Mapped[int | None] = mapped_column(Integer, default=None)
    trained_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        # One queued or running job per series: a second request gets the first job back.
        Index(
            "uq_jobs_one_open_per_series",
            "series_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED)
    reason: Mapped[str] = mapped_column(String(32), default="manual")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    model_version: Mapped[int | None] = mapped_column(Integer, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    """A retrain queued by labels waits until then: each new label moves it on (debounce)."""

    series: Mapped[Series] = relationship(lazy="raise")


class Activations(Base):
    """One row: a counter bumped in the same transaction as every change of a series' active
    version, and every change or deletion of a series' definition. Each API request's key
    lookup reads it too, so an API process learns of a new version before it scores a request
    that arrived after the change; and the model registry's poll re-reads series and versions
    only when it moved (app/scoring/registry.py)."""

    __tablename__ = "activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class IdempotencyRecord(Base):
    """A response remembered under a client's Idempotency-Key (IETF httpapi draft)."""

    __tablename__ = "idempotency_keys"

    principal: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 of the caller's API key: keys are scoped to whoever sent them."""
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 of method, path and body: the same key with another request is refused."""
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    """None while the first request is still in flight."""
    lease_owner: Mapped[str | None] = mapped_column(String(32), default=None)
    """The live request that holds the key (a random token), while it is in flight."""
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    """The holder renews this while it runs; once past, the request is taken for dead."""
    committed_at: Mapped[datetime | None] = mapped_column(default=None)
    """Set in the operation's own transaction: the operation is done, even if its response
    was never recorded (the process died in between), so it is never performed again."""
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RateLimit(Base):
    """Each API key's request allowance (GCRA), shared by every API process."""

    __tablename__ = "rate_limits"

    principal: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 of the API key."""
    tat: Mapped[int] = mapped_column(BigInteger)
    """Theoretical arrival time, microseconds since the epoch: when the key's allowance is
    full again. A request is admitted while tat - now <= 60 s - 60 s / limit."""


# -- notifications (app/detection/webhooks.py) ------------------------------------------------

DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"


class Webhook(Base):
    """An HTTP endpoint that receives signed event notifications."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))
    """The HMAC key deliveries are signed with; shown once, at creation. Stored as it is:
    signing needs it (unlike an API key, which is only ever compared)."""
    events: Mapped[list[str]] = mapped_column()
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    """Deleted webhooks stay as rows (secret wiped) so that an outbox row written by a
    transaction that raced the deletion never breaks that transaction's foreign key."""


class WebhookDelivery(Base):
    """One event for one webhook: the transactional outbox row, and its delivery record."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    """The idempotency id: the same on every attempt (`Vigil-Delivery` header, body `id`)."""
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    """The exact JSON body, fixed at emit time: every attempt sends (and signs) these bytes."""
    status: Mapped[str] = mapped_column(String(16), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    """When a deliverer may take it next; while an attempt runs, the end of its lease."""
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """One entry per finished attempt: when, HTTP status or error, duration."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditRecord(Base):
    """One admin operation (deleting a series, ...): who, what, on what, when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    key_name: Mapped[str | None] = mapped_column(String(100), default=None)
    """The API key's name (None: an operation from the command line)."""
    key_prefix: Mapped[str | None] = mapped_column(String(12), default=None)
    action: Mapped[str] = mapped_column(String(64))
    """What was done, e.g. `series.delete`."""
    target: Mapped[str] = mapped_column(String(200))
    """What it was done to, e.g. `series/7`."""
    detail: Mapped[dict[str, Any]] = mapped_column()
    """What the operation removed or changed, e.g. the rows deleted per table."""


# -- detection (app/detection/) ----------------------------------------------------------------
ALARM_OPEN = "open"
ALARM_CLOSED = "closed"
ALARM_ACKNOWLEDGED = "acknowledged"
ALARM_DISMISSED = "dismissed"
ALARM_CONFIRMED = "confirmed"
ALARM_STATUSES = (ALARM_OPEN, ALARM_CLOSED, ALARM_ACKNOWLEDGED, ALARM_DISMISSED, ALARM_CONFIRMED)


class DetectState(Base):
    """Per series: the time range ingestion changed since the detector last looked, and the
    detector that holds the series while it scores (a lease, as jobs have)."""

    __tablename__ = "detect_state"

    series_id: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True
    )
    dirty_from: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """Earliest timestamp (µs) of a point written since the last claim; None: nothing new."""
    dirty_until: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """Latest timestamp (µs) of a point written since the last claim."""
    dirty_at: Mapped[datetime | None] = mapped_column(default=None)
    """When the oldest of those writes was made (the detection lag runs from here)."""
    claimed_from: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """The range a detector took over with its lease; given back if its lease expires."""
    claimed_until: Mapped[int | None] = mapped_column(BigInteger, default=None)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class WindowScore(Base):
    """A window of a series' stored points, scored by the detector (not by /v1/score)."""

    __tablename__ = "window_scores"
    __table_args__ = (Index("ix_window_scores_series_seq", "series_id", "seq"),)

    series_id: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True
    )
    start_ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    end_ts: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    """The window's place in the series' window grid (one step = `stride` points)."""
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    """BLAKE2b of the window's timestamps and values: a changed point changes it."""
    model_version: Mapped[int] = mapped_column(Integer)
    raw_score: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    adjusted_score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    is_anomaly: Mapped[bool] = mapped_column(Boolean)
    """Adjusted score above the threshold, or a data-quality check failed."""
    quality: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    """Failed data-quality checks, `{"check", "channel"}` each."""
    contributions: Mapped[list[float]] = mapped_column(JSON)
    """Per channel (series order), its share of the raw score (models.ScoreBatch)."""
    scored_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alarm(Base):
    """Consecutive flagged windows of one series and one cause, as one event."""

    __tablename__ = "alarms"
    __table_args__ = (
        Index("ix_alarms_series_seq", "series_id", "last_seq"),
        Index("ix_alarms_open", "series_id", "closed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    """`model` (the score passed the threshold) or `data_quality` (a check failed)."""
    check: Mapped[str | None] = mapped_column(String(32), default=None)
    status: Mapped[str] = mapped_column(String(16), default=ALARM_OPEN)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    start_ts: Mapped[int] = mapped_column(BigInteger)
    end_ts: Mapped[int] = mapped_column(BigInteger)
    windows: Mapped[int] = mapped_column(Integer)
    peak_score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    model_version: Mapped[int] = mapped_column(Integer)
    channels: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200), default=None)
    verdict: Mapped[str | None] = mapped_column(String(100), default=None)
    verdict_at: Mapped[datetime | None] = mapped_column(default=None)
    verdict_by: Mapped[str | None] = mapped_column(String(200), default=None)
    verdict_note: Mapped[str | None] = mapped_column(Text, default=None)
    label_ids: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    retrain_job_id: Mapped[int | None] = mapped_column(Integer, default=None)
