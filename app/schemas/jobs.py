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
    not_before: UtcDateTime | None = Field(
        default=None,
        description="A retrain queued by labels waits for quiet until then (null: due now).",
    )
    progress: float = Field(description="0 to 1; optimiser steps done over the step budget.")
    error: str | None
    model_version: int | None = Field(description="The version this job produced.")
    metrics: dict[str, Any] | None = Field(
        description=(
            "Set when the job succeeded. Data: `points`, `windows` (stored windows plus posted "
            "feedback windows), `train_windows`, `validation_windows`, `labelled_windows` "
            "(training windows with a label), `feedback_windows` (posted windows), "
            "`elbo_windows` (training windows that teach normal behaviour). Training: "
            "`steps` (optimiser steps run), `step_budget`, `step_floor` (before it early "
            "stopping may not end the job), `batch_size`, `best_step` (whose "
            "weights were kept), `stopped` (`budget`, `early` or `diverged`), "
            "`train_seconds`. Evaluation on the validation windows, in nats of the raw "
            "values per window (lower is better; negative for a tight fit): `val_loss` (the "
            "training objective), `val_nll`, `val_kl`, `val_ce` (null without labels), "
            "`val_accuracy` (of π on labelled steps; null without labels), `active_val_loss` "
            "(the active version on the same windows). Calibration: `threshold`, "
            "`calibration_source`, `calibration_outliers` (held-out windows left out of the "
            "threshold as far out: likely unlabelled faults). With labels, the promotion "
            "gate's counts for this version and the active one (`active_` prefix): "
            "`marked_alarms`, `missed_faults`, `val_false_alarms`. Finally `activated` "
            "(whether the version became active) and `note` (why not)."
        )
    )
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
    versions: list[ModelVersionOut] = Field(description="A page of versions, oldest first.")
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null: no more."
    )


class JobPage(BaseModel):
    jobs: list[JobOut] = Field(description="A page of jobs, newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: no more."
    )
