"""Labels: a class for a time range of a series, or feedback on one scored window."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    StringConstraints,
    Tag,
    model_validator,
)

from app.schemas.common import (
    DbId,
    Line,
    Text,
    TimestampUs,
    UtcDateTime,
    is_naive_iso,
    us_to_datetime,
)

if TYPE_CHECKING:
    from app.db.models import Job, Label

LabelName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Author = Annotated[Line, StringConstraints(min_length=1, max_length=200)]
Note = Annotated[Text, StringConstraints(max_length=10_000)]


class RangeLabelCreate(BaseModel):
    """Label the time range [start, end] (both inclusive) of a series with one of its classes."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    series_id: DbId = Field(strict=True, description="The series to label.")
    start: TimestampUs = Field(description="First labelled instant (inclusive).")
    end: TimestampUs = Field(description="Last labelled instant (inclusive), not before start.")
    label: LabelName = Field(description="A class of the series.", examples=["bearing_fault"])
    author: Author | None = None
    note: Note | None = None
    _naive: list[str] = PrivateAttr(default_factory=list)
    """The fields given as ISO-8601 without a UTC offset (taken as UTC)."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError("end must not be before start")
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _note_naive_times(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        label = handler(data)
        if isinstance(data, dict):
            label._naive = [name for name in ("start", "end") if is_naive_iso(data.get(name))]
        return label

    @property
    def naive_fields(self) -> list[str]:
        return list(self._naive)


class ScoreLabelCreate(BaseModel):
    """Feedback on a scored window: `false_positive`, `false_negative` or a class of the series."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    score_id: uuid.UUID = Field(description="The `score_id` of a result of POST /v1/score.")
    label: LabelName = Field(examples=["false_positive"])
    series_id: DbId | None = Field(
        default=None,
        strict=True,
        description="Optional: when given, it must be the series the score belongs to.",
    )
    author: Author | None = None
    note: Note | None = None


def _label_form(value: Any) -> str:
    if isinstance(value, dict):
        return "score" if "score_id" in value else "range"
    return "score" if isinstance(value, ScoreLabelCreate) else "range"


LabelCreate = Annotated[
    Annotated[RangeLabelCreate, Tag("range")] | Annotated[ScoreLabelCreate, Tag("score")],
    Discriminator(_label_form),
]
"""A body with `score_id` is score feedback; any other body is a range label."""


class RetrainOut(BaseModel):
    """The retrain a label queued or joined, as it stands."""

    job_id: int
    status: str = Field(description="queued, running, succeeded or failed.")
    not_before: UtcDateTime | None = Field(
        description="A queued retrain waits for quiet until then; each new label moves it on."
    )
    model_version: int | None = Field(description="The version it produced.")
    activated: bool | None = Field(
        description="Whether that version became active (null until the job ends)."
    )
    note: str | None = Field(description="Why the version was kept as a candidate, or the error.")

    @classmethod
    def of(cls, job: Job) -> RetrainOut:
        metrics = job.metrics or {}
        activated = metrics.get("activated")
        return cls(
            job_id=job.id,
            status=job.status,
            not_before=job.not_before,
            model_version=job.model_version,
            activated=activated if isinstance(activated, bool) else None,
            note=job.error or metrics.get("note"),
        )


class LabelOut(BaseModel):
    id: int
    series_id: int
    start: UtcDateTime | None = Field(description="Start of the labelled range (UTC), if any.")
    end: UtcDateTime | None = Field(description="End of the labelled range (UTC), if any.")
    label: str
    score_id: uuid.UUID | None
    model_version: int | None = Field(description="The model version whose score this is about.")
    author: str | None
    note: str | None
    created_at: UtcDateTime
    deleted_at: UtcDateTime | None = Field(description="Set once the label is deleted (soft).")
    retrain: RetrainOut | None = Field(
        default=None,
        description=(
            "The automatic retrain this label queued or joined (`VIGIL_RETRAIN_AFTER_LABELS`, "
            "`VIGIL_RETRAIN_QUIET_SECONDS`), with its outcome once it has one: a version kept "
            "as a candidate says why here. Null if the label armed none (no active model yet, "
            "or a retrain was running: the worker queues the next one when it ends)."
        ),
    )

    @classmethod
    def of(cls, label: Label, job: Job | None = None, **extra: Any) -> Self:
        return cls(
            retrain=RetrainOut.of(job) if job is not None else None,
            id=label.id,
            series_id=label.series_id,
            start=None if label.start_ts is None else us_to_datetime(label.start_ts),
            end=None if label.end_ts is None else us_to_datetime(label.end_ts),
            label=label.label,
            score_id=label.score_id,
            model_version=label.model_version,
            author=label.author,
            note=label.note,
            created_at=label.created_at,
            deleted_at=label.deleted_at,
            **extra,
        )


class LabelCreatedOut(LabelOut):
    """The label as stored, with what it covers and anything it does that may surprise."""

    points: int | None = Field(
        description="Stored points in the labelled range now (range labels; null for feedback "
        "on a score). Points ingested into the range later are labelled too."
    )
    windows: int | None = Field(
        description="Windows of `window_size` points, one every `stride`, that the range "
        "holds now (range labels). A range shorter than a window still labels its points."
    )
    warnings: list[str] = Field(
        description="What the label does that may not be what was meant: a range with no "
        "stored points, times without a UTC offset taken as UTC, `false_positive` on a "
        "window that raised no alarm (or `false_negative` on one that did)."
    )


class LabelPage(BaseModel):
    labels: list[LabelOut] = Field(description="A page of labels, oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: no more."
    )
