"""Training jobs and model versions as the API shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from app.schemas.common import UtcDateTime


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    series_id: int
    status: Literal["queued", "running", "succeeded", "failed"]
    reason: str = Field(description="`manual` (API), or `labels` (queued after new labels).")
    progress: float = Field(description="0 to 1; epochs done over the epoch budget.")
    error: str | None
    model_version: int | None = Field(description="The version this job produced.")
    metrics: dict[str, Any] | None
    attempts: int
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None

    @computed_field(description="Same as `id`.")  # type: ignore[prop-decorator]
    @property
    def job_id(self) -> int:
        return self.id


class ModelVersionOut(BaseModel):
    series_id: int
    version: int
    status: Literal["active", "candidate", "retired"]
    active: bool
    metrics: dict[str, Any]
    note: str | None
    sha256: str
    job_id: int | None
    trained_at: UtcDateTime
    activated_at: UtcDateTime | None


class ModelVersionList(BaseModel):
    series_id: int
    active_version: int | None
    versions: list[ModelVersionOut]
