"""What the service answers, as typed, immutable models.

Every model keeps fields it does not declare (`extra="allow"`): a newer service that adds a
field does not break an older client, and `model_extra` shows it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Alarm",
    "AlarmChannel",
    "AlarmDetail",
    "AlarmEvent",
    "DataQualityCheck",
    "Delivery",
    "IngestResult",
    "Job",
    "Label",
    "LabelCreated",
    "ModelVersion",
    "ModelVersions",
    "Page",
    "Points",
    "Readiness",
    "Retrain",
    "ScoreResponse",
    "ScoreResult",
    "Series",
    "StoredScore",
    "Verdict",
    "Webhook",
    "WebhookCreated",
]

T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Page(Model, Generic[T]):
    """One page of a list: its items and the cursor of the next page (None: the last)."""

    items: list[T]
    next_cursor: str | None = None


# -- series, points -------------------------------------------------------------------------


class Series(Model):
    id: int
    name: str
    channels: list[str]
    window_size: int
    stride: int
    classes: dict[str, str]
    threshold_quantile: float
    labels_since_train: int = 0
    training: dict[str, Any] = Field(default_factory=dict)
    max_gap: float | None = None
    created_at: datetime
    updated_at: datetime


class IngestResult(Model):
    received: int
    inserted: int
    updated: int
    unchanged: int
    warnings: list[str] = Field(default_factory=list)


class Points(Model):
    """Stored points, oldest first; None where a value is missing."""

    timestamps: list[datetime]
    values: list[list[float | None]]
    next_cursor: str | None = None


# -- scoring ----------------------------------------------------------------------------------


class DataQualityCheck(Model):
    check: str
    channel: str


class ScoreResult(Model):
    """One window's score. A window of a stored range with too much missing data is not
    scored (`scored` false): its numbers are None and it raises no alarm."""

    score_id: str | None
    raw_score: float | None
    score: float | None
    p_false_positive: float | None = 0.0
    p_false_negative: float | None = 0.0
    adjusted_score: float | None
    is_anomaly: bool
    scored: bool = True
    missing_fraction: float = 0.0
    class_probabilities: dict[str, float] = Field(default_factory=dict)
    feedback_probabilities: dict[str, float] = Field(default_factory=dict)
    channel_contributions: dict[str, float] = Field(default_factory=dict)
    data_quality: list[DataQualityCheck] = Field(default_factory=list)
    step_contributions: list[float] | None = None
    start: datetime | None = None
    end: datetime | None = None


class ScoreResponse(Model):
    series_id: int
    model_version: int
    threshold: float
    results: list[ScoreResult]
    next_cursor: str | None = None
    """Range requests: more windows remain; `score_range(..., cursor=)` gets them."""

    def to_frame(self) -> Any:
        """The results as a pandas DataFrame, one row per window (needs pandas)."""
        from vigil_client._frames import score_frame

        return score_frame(self)


class StoredScore(Model):
    """A window that detection on ingest scored (GET /v1/series/{id}/scores, and the
    windows of an alarm)."""

    start: datetime
    end: datetime
    model_version: int | None = None
    raw_score: float | None = None
    score: float | None = None
    adjusted_score: float | None = None
    threshold: float | None = None
    is_anomaly: bool = False
    data_quality: list[DataQualityCheck] = Field(default_factory=list)
    channel_contributions: dict[str, float] = Field(default_factory=dict)
    scored_at: datetime | None = None


# -- labels, jobs, models -------------------------------------------------------------------


class Retrain(Model):
    job_id: int
    status: str
    not_before: datetime | None = None
    model_version: int | None = None
    activated: bool | None = None
    note: str | None = None


class Label(Model):
    id: int
    series_id: int
    start: datetime | None = None
    end: datetime | None = None
    label: str
    score_id: str | None = None
    model_version: int | None = None
    author: str | None = None
    note: str | None = None
    created_at: datetime
    deleted_at: datetime | None = None
    retrain: Retrain | None = None


class LabelCreated(Label):
    points: int | None = None
    windows: int | None = None
    warnings: list[str] = Field(default_factory=list)


JobStatus = Literal["queued", "running", "succeeded", "failed"]


class Job(Model):
    id: int
    series_id: int
    status: JobStatus
    reason: str = "manual"
    not_before: datetime | None = None
    progress: float = 0.0
    error: str | None = None
    model_version: int | None = None
    metrics: dict[str, Any] | None = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")


class ModelVersion(Model):
    series_id: int
    version: int
    status: str
    active: bool
    metrics: dict[str, Any] = Field(default_factory=dict)
    note: str | None = None
    sha256: str
    job_id: int | None = None
    trained_at: datetime
    activated_at: datetime | None = None


class ModelVersions(Model):
    series_id: int
    active_version: int | None
    versions: list[ModelVersion]
    next_cursor: str | None = None


class Readiness(Model):
    status: str
    database: str = ""
    revision: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# -- alarms ---------------------------------------------------------------------------------


class AlarmChannel(Model):
    name: str
    share: float


class Alarm(Model):
    """An alarm: consecutive flagged windows of one series, as one event.

    `status` is `open`, `closed`, `acknowledged`, `dismissed` (a `false_positive` verdict)
    or `confirmed` (a fault class); `kind` is `model` or `data_quality` (then `check` names
    it); `verdict` is the label an operator gave it.
    """

    id: int
    series_id: int
    start: datetime
    end: datetime | None = None
    status: str
    kind: str | None = None
    check: str | None = None
    peak_score: float | None = None
    threshold: float | None = None
    model_version: int | None = None
    windows: int | None = None
    channels: list[AlarmChannel] = Field(default_factory=list)
    verdict: str | None = None
    verdict_note: str | None = None
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    acknowledged_at: datetime | None = None
    verdict_at: datetime | None = None
    label_ids: list[int] = Field(default_factory=list)
    retrain_job_id: int | None = None

    def fingerprint(self) -> tuple[Any, ...]:
        """What changes when the alarm does (for `watch_alarms`)."""
        return (
            self.status,
            self.end,
            self.peak_score,
            self.windows,
            self.verdict,
            self.acknowledged_at,
            self.closed_at,
        )


class AlarmDetail(Alarm):
    """One alarm with the scores of every window it spans, flagged or not, oldest first."""

    scores: list[StoredScore] = Field(default_factory=list)


class Verdict(Model):
    """What a verdict did: the alarm as it now is, the range labels it created over the
    alarm's span, and the retrain those queued or joined."""

    alarm: Alarm
    label_ids: list[int] = Field(default_factory=list)
    retrain: Retrain | None = None


class AlarmEvent(Model):
    """What `watch_alarms` yields: an alarm seen for the first time, or seen changed."""

    type: Literal["opened", "changed"]
    alarm: Alarm


# -- webhooks ---------------------------------------------------------------------------------


class Webhook(Model):
    id: int
    url: str
    events: list[str] = Field(default_factory=list)
    enabled: bool = True
    secret_hint: str | None = None
    created_at: datetime | None = None


class WebhookCreated(Webhook):
    secret: str | None = None
    """The secret the service made when none was given; shown only in this answer."""


class Delivery(Model):
    """One event for one webhook, and every attempt at delivering it."""

    id: str
    webhook_id: int
    event: str
    status: str
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime | None = None
    delivered_at: datetime | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)
