"""Series: a named multivariate stream, its window geometry and its label classes."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.schemas.common import BUILTIN_CLASSES, ClassKind, Slug, UtcDateTime

MAX_CHANNELS = 64
MAX_USER_CLASSES = 64
RESERVED_CHANNEL_NAMES = frozenset({"timestamp"})
"""`timestamp` is the first column of a CSV upload, so no channel may be called that."""
IMMUTABLE_FIELDS = ("name", "channels", "window_size", "stride")

ChannelName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
"""A channel name: 1-100 printable characters without commas or quotes, not padded with spaces."""

Quantile = Annotated[float, Field(gt=0.0, lt=1.0)]
MaxGap = Annotated[float, Field(gt=0.0, le=10 * 365 * 86400.0)]

MAX_GAP_DESCRIPTION = (
    "Seconds: no window spans a longer gap between consecutive points, for training and for "
    "scoring stored ranges alike. Null (the default): `VIGIL_MAX_GAP_FACTOR` (3) times the "
    "median sampling interval, as the active model recorded it at training, else as the "
    "points show it."
)

ONLY_CLASS_NAMES: Final[dict[str, Any]] = {"additionalProperties": False}
"""In openapi.json, a classes object whose names all match the slug pattern: without it,
patternProperties alone lets any other name through with any value (the server says 422)."""


def channel_name_problem(name: str) -> str | None:
    """Why `name` cannot name a channel (it must survive a CSV header), or None."""
    if name != name.strip():
        return "must not start or end with white space"
    if any(c in ',"' or not c.isprintable() for c in name):
        return "must not contain commas, quotes or control characters"
    return None


def check_classes(classes: dict[str, ClassKind]) -> None:
    """User classes may repeat a built-in class only with the built-in's kind."""
    for name, kind in classes.items():
        builtin = BUILTIN_CLASSES.get(name)
        if builtin is not None and builtin != kind:
            raise ValueError(
                f"class {name!r} is built in with kind {builtin!r}; it cannot be redefined "
                f"as {kind!r}"
            )


class TrainingOptions(BaseModel):
    """How this series' models train; each option left out keeps the service's default.
    The defaults are meant to need no tuning: these are for the plant engineer who knows
    better for one machine. They apply from the next training job on."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    steps: int | None = Field(
        default=None, ge=1, le=100_000, description="Optimiser steps (default: automatic)."
    )
    batch_size: int | None = Field(
        default=None, ge=4, le=1024, description="Windows per batch (default: 16 to 64)."
    )
    lr: float | None = Field(default=None, gt=0.0, le=1.0, description="RMSprop learning rate.")
    patience: int | None = Field(
        default=None, ge=1, le=1000, description="Validation checks without improvement."
    )
    flavour: Literal["recurrent", "dense", "conv"] | None = Field(
        default=None, description="Network flavour (default: recurrent)."
    )
    variant: Literal["ss", "eu"] | None = Field(
        default=None,
        description="`ss`: semi-supervised, with the class head π (default); `eu`: no π "
        "(no class probabilities and no feedback adjustment).",
    )
    latent_dim: int | None = Field(
        default=None, ge=1, le=64, description="Size of the Gaussian latent z (default 2)."
    )
    autoregressive: bool | None = Field(
        default=None,
        description="Recurrent flavour: the decoder also reads each window's previous step "
        "(default true). A model trained before this option existed keeps the preprint's "
        "decoder through warm-started retrains until this is set.",
    )
    members: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Networks in the ensemble (default `VIGIL_TRAIN_MEMBERS`, 3).",
    )
    score_samples: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Samples L of the reconstruction probability when scoring "
        "(default `VIGIL_SCORE_SAMPLES`).",
    )


class SeriesCreate(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    name: Slug = Field(
        description="Unique name: letters, digits, `-`, `_` and `.`, 1 to 100 characters.",
        examples=["pump-7"],
    )
    channels: list[ChannelName] = Field(
        min_length=1,
        max_length=MAX_CHANNELS,
        description="Sensor channel names, unique, in the order of each row's values.",
        examples=[["flow", "pressure", "temperature"]],
    )
    window_size: int = Field(ge=2, le=4096, description="Time steps per window.", examples=[128])
    stride: int = Field(
        ge=1, le=4096, description="Steps between window starts (1 to window_size).", examples=[64]
    )
    classes: dict[Slug, ClassKind] = Field(
        default_factory=dict,
        json_schema_extra=ONLY_CLASS_NAMES,
        max_length=MAX_USER_CLASSES,
        description=(
            "Extra label classes, name -> kind (`normal` or `anomaly`). The built-in classes "
            "normal, anomaly, false_positive (normal) and false_negative (anomaly) are added."
        ),
        examples=[{"idle": "normal", "bearing_fault": "anomaly"}],
    )
    threshold_quantile: Quantile = Field(
        default=0.99,
        description="Quantile of held-out normal scores used as the alarm threshold.",
    )
    training: TrainingOptions | None = Field(
        default=None, description="Training options; left out: the service's defaults."
    )
    max_gap: MaxGap | None = Field(default=None, description=MAX_GAP_DESCRIPTION)
    detect: bool = Field(
        default=True,
        description="Score the windows that ingestion adds with the active model and raise "
        "alarms (GET /v1/alarms), without any /v1/score call.",
    )
    alarm_merge_gap: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="Unflagged windows between two flagged ones that still leave them in one "
        "alarm.",
    )

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, channels: list[str]) -> list[str]:
        seen: set[str] = set()
        for index, channel in enumerate(channels):
            problem = channel_name_problem(channel)
            if problem:
                raise ValueError(f"channels[{index}] {channel!r} {problem}")
            if channel.lower() in RESERVED_CHANNEL_NAMES:
                raise ValueError(f"channels[{index}] {channel!r} is reserved for the time column")
            if channel in seen:
                raise ValueError(f"channels[{index}] {channel!r} appears more than once")
            seen.add(channel)
        return channels

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, classes: dict[str, ClassKind]) -> dict[str, ClassKind]:
        check_classes(classes)
        return classes

    @model_validator(mode="after")
    def _check_stride(self) -> Self:
        if self.stride > self.window_size:
            raise ValueError(
                f"stride ({self.stride}) must not exceed window_size ({self.window_size})"
            )
        return self


class SeriesUpdate(BaseModel):
    """A partial update. Classes are added, never changed or removed: trained models use them."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    classes: (
        Annotated[dict[Slug, ClassKind | None], Field(json_schema_extra=ONLY_CLASS_NAMES)] | None
    ) = Field(
        default=None,
        max_length=MAX_USER_CLASSES,
        description=(
            "Classes to add (name -> kind). Existing classes may be repeated with their kind; "
            "changing a kind or removing a class (null) is refused with 409."
        ),
        examples=[{"seal_leak": "anomaly"}],
    )
    threshold_quantile: Quantile | None = Field(
        default=None, description="New alarm threshold quantile, 0 < q < 1."
    )
    training: TrainingOptions | None = Field(
        default=None,
        description="Replaces the training options (send `{}` to go back to the defaults).",
    )
    max_gap: MaxGap | None = Field(
        default=None,
        description="New gap limit in seconds (see SeriesCreate); it applies to the next "
        "training job and scoring request. Send `reset_max_gap: true` to derive it again.",
    )
    reset_max_gap: bool = Field(
        default=False, description="Back to the derived gap limit (max_gap null)."
    )
    detect: bool | None = Field(
        default=None, description="Turn detection on ingest on or off for this series."
    )
    alarm_merge_gap: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Unflagged windows between flagged ones that still merge into one alarm.",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_immutable(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fixed = [name for name in IMMUTABLE_FIELDS if name in data]
            if fixed:
                raise ValueError(
                    f"{', '.join(fixed)} cannot be changed after creation; "
                    "create a new series instead"
                )
        return data


class SeriesOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    channels: list[str]
    window_size: int
    stride: int
    classes: dict[str, ClassKind] = Field(description="All classes, built-in ones included.")
    threshold_quantile: float
    labels_since_train: int = Field(description="Labels added since the last training job.")
    training: TrainingOptions = Field(
        default_factory=TrainingOptions, description="Training options (null: the default)."
    )
    max_gap: float | None = Field(default=None, description=MAX_GAP_DESCRIPTION)

    @field_validator("training", mode="before")
    @classmethod
    def _defaults(cls, value: Any) -> Any:
        return {} if value is None else value

    detect: bool = Field(default=True, description="Detection on ingest is on.")
    alarm_merge_gap: int = Field(
        default=2, description="Unflagged windows that still merge flagged ones into one alarm."
    )
    created_at: UtcDateTime
    updated_at: UtcDateTime


class SeriesPage(BaseModel):
    series: list[SeriesOut] = Field(description="A page of series, oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: no more."
    )
