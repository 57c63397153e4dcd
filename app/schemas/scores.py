"""Scoring requests and responses.

The route parses bodies itself (orjson straight into numpy: pydantic would spend longer
validating 256 × 128 × 6 floats than the model spends scoring them); these models document
the contract in OpenAPI and are used to validate the small fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.schemas.common import TIMESTAMP_JSON_SCHEMA, DbId

Timestamp = Annotated[str | float, WithJsonSchema(TIMESTAMP_JSON_SCHEMA)]
"""Documents what `parse_instant` reads (the route parses the body itself)."""


class ScoreWindowsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series_id: DbId = Field(description="The series whose active model scores the windows.")
    windows: list[list[list[float]]] = Field(
        description="1 to 1,024 windows, each `window_size` time steps × one value per channel.",
        min_length=1,
        max_length=1024,
    )


class ScoreRangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series_id: DbId
    start: Timestamp = Field(description="ISO-8601 timestamp or epoch seconds (inclusive).")
    end: Timestamp = Field(description="ISO-8601 timestamp or epoch seconds (inclusive).")
    cursor: str | None = Field(
        default=None,
        description="`next_cursor` of the previous answer for the same range: the next page "
        "of windows. Absent for the first page.",
    )


class DataQualityCheck(BaseModel):
    check: Literal["stuck", "out_of_range", "dropout", "missing_data"]
    channel: str


class ScoreResult(BaseModel):
    score_id: str | None = Field(
        description="Point feedback at this window with POST /v1/labels (null: not scored)."
    )
    raw_score: float | None = Field(description="−log of the reconstruction probability, in nats.")
    score: float | None = Field(description="Calibrated score: ≥ 0, grows with anomalousness.")
    p_false_positive: float | None = Field(
        description="The false_positive probability applied to the score: π's, faded above "
        "the worst alarm operators dismissed; 0 until the class has labels."
    )
    p_false_negative: float | None = Field(
        description="The false_negative probability applied: π's, at most 0.99; 0 until the "
        "class has labels."
    )
    adjusted_score: float | None = Field(description="score × (1 − p_fp) / (1 − p_fn).")
    is_anomaly: bool = Field(
        description="An alarm: adjusted_score > threshold, or a data-quality check failed."
    )
    class_probabilities: dict[str, float] = Field(
        description="A distribution over the series' own classes (normal and anomaly kinds) "
        "that the model had labels of: π's probabilities, renormalised over them to sum to "
        "1. Empty for a model trained without such labels."
    )
    feedback_probabilities: dict[str, float] = Field(
        default_factory=dict,
        description="π's own probabilities of the feedback classes (`false_positive`, "
        "`false_negative`) that had labels, apart from the distribution above.",
    )
    channel_contributions: dict[str, float] = Field(
        description="Each channel's share of the raw score: which sensor looks wrong."
    )
    data_quality: list[DataQualityCheck] = Field(
        default_factory=list,
        description="Data-quality checks the window failed, each naming the channel: "
        "`stuck` (a channel that always moved in training does not move at all), "
        "`out_of_range` (a value beyond the training range by more than 10 % of it), "
        "`dropout` (a run of exact zeros on a channel that was almost never zero). Each "
        "raises an alarm of its own, whatever the score says. `missing_data` (a window of a "
        "stored range with more than `VIGIL_MAX_MISSING_FRACTION` of its values missing, on "
        "each channel that has gaps) comes with `scored: false` and raises no alarm.",
    )
    scored: bool = Field(
        default=True,
        description="False for a window with too much missing data: it was not scored (the "
        "numbers are null, `is_anomaly` is false), which is not the same as normal.",
    )
    missing_fraction: float = Field(
        default=0.0,
        description="Share of the window's values that were missing (stored ranges only; "
        "they are forward-filled, then set to the channel's training mean, before scoring).",
    )
    step_contributions: list[float] | None = Field(
        default=None, description="Each time step's share (only with `?detail=steps`)."
    )
    start: str | None = Field(default=None, description="First timestamp (range requests).")
    end: str | None = Field(default=None, description="Last timestamp (range requests).")


class ScoreResponse(BaseModel):
    series_id: int
    model_version: int
    threshold: float = Field(description="Alarm threshold of the series' quantile.")
    results: list[ScoreResult]
    next_cursor: str | None = Field(
        default=None,
        description="Range requests: more windows remain in the range; send this back as "
        "`cursor` with the same series_id, start and end for the next page. Null: done.",
    )


SCORE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: {"description": "The body is not valid JSON"},
    404: {"description": "The series does not exist"},
    409: {"description": "The series has no trained model yet"},
    413: {"description": "The body is over `VIGIL_MAX_BODY_BYTES`"},
    415: {"description": "The body is neither application/json nor application/octet-stream"},
    422: {
        "description": (
            "Invalid input: windows of the wrong shape, non-finite values, too many windows, "
            "a bad time range, or bad X-Vigil-* headers"
        )
    },
}
"""Errors of POST /v1/score, for its OpenAPI `responses=` (problem documents)."""
