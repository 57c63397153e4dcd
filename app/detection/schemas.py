"""Alarms and stored window scores as the API shows them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import Text
from app.schemas.labels import RetrainOut

AlarmStatus = Literal["open", "closed", "acknowledged", "dismissed", "confirmed"]
DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class ChannelShare(BaseModel):
    name: str
    share: float = Field(description="The channel's share of the alarm, 0 to 1.")


class AlarmOut(BaseModel):
    id: int
    series_id: int
    start: DateTime = Field(description="Start of the alarm's first flagged window.")
    end: DateTime = Field(description="End of its last flagged window.")
    status: AlarmStatus
    kind: Literal["model", "data_quality"]
    check: str | None = Field(
        description="The data-quality check (stuck, out_of_range, dropout); null for `model`."
    )
    peak_score: float = Field(description="Highest adjusted score of its flagged windows.")
    threshold: float = Field(description="The alarm threshold at that window.")
    model_version: int = Field(description="The version that scored that window.")
    windows: int = Field(description="Flagged windows in the alarm.")
    channels: list[ChannelShare] = Field(
        description="Channels by their share, largest first: of the windows' contributions to "
        "the score (`model`), or of the windows in which the check failed (`data_quality`)."
    )
    verdict: str | None = Field(description="The label an operator gave the alarm, or null.")
    opened_at: DateTime
    closed_at: DateTime | None = Field(
        description="When it went quiet (VIGIL_ALARM_CLOSE_AFTER windows) or got its verdict."
    )
    acknowledged_at: DateTime | None
    acknowledged_by: str | None = Field(description="The API key that acknowledged it.")
    verdict_at: DateTime | None
    verdict_by: str | None = Field(description="The API key that gave the verdict.")
    verdict_note: str | None
    label_ids: list[int] = Field(description="The labels the verdict created.")
    retrain_job_id: int | None = Field(description="The retrain the verdict queued or joined.")


class AlarmPage(BaseModel):
    alarms: list[AlarmOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: end.")


class QualityFlag(BaseModel):
    check: str
    channel: str


class WindowScoreOut(BaseModel):
    start: DateTime
    end: DateTime
    model_version: int
    raw_score: float
    score: float = Field(description="Calibrated score.")
    adjusted_score: float = Field(description="Calibrated score corrected by operator feedback.")
    threshold: float
    is_anomaly: bool = Field(description="Adjusted score above the threshold, or a check failed.")
    data_quality: list[QualityFlag]
    channel_contributions: dict[str, float]
    scored_at: DateTime


class AlarmDetail(AlarmOut):
    scores: list[WindowScoreOut] = Field(
        description="Every scored window the alarm spans, flagged or not, oldest first."
    )


class ScorePage(BaseModel):
    scores: list[WindowScoreOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: end.")


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="`false_positive` (dismisses the alarm) or an anomaly class of the series "
        "(confirms the fault).",
        examples=["false_positive"],
    )
    note: Annotated[Text, StringConstraints(max_length=10_000)] | None = None


class VerdictOut(BaseModel):
    alarm: AlarmOut
    label_ids: list[int] = Field(description="The range labels created over the alarm's span.")
    retrain: RetrainOut | None = Field(
        description="The retrain the labels queued or joined (as POST /v1/labels answers)."
    )
