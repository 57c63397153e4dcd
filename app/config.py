"""Vigil's settings: every one comes from a `VIGIL_*` environment variable."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "admin"})
MIN_BOOTSTRAP_KEY_LENGTH = 24
"""Shorter bootstrap keys are refused in production (and warned about by `vigil serve`)."""


class Settings(BaseSettings):
    # NOTE: no env_file: `.env` belongs to docker compose, and a developer's copy of it must
    # not turn `make run` into a production-mode instance.
    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    """`production` refuses placeholder secrets and requires an explicit database URL."""

    database_url: str = Field(default="sqlite:///./vigil.db", repr=False)
    """SQLAlchemy URL. Postgres: `postgresql+psycopg://user:pass@host:5432/vigil`."""

    db_pool_size: int = Field(default=10, ge=1)
    """Pooled Postgres connections each API process keeps open."""

    db_max_overflow: int = Field(default=10, ge=0)
    """Connections an API process may open beyond the pool under load (closed when returned)."""

    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a request waits for a free connection before it is refused with 503 "busy,
    retry" (not "unavailable": the database is up, this process is saturated)."""

    db_lock_timeout_seconds: float = Field(default=5.0, gt=0)
    """Postgres `lock_timeout` of the API's statements: a statement that waits longer for a
    row lock fails, its transaction is rolled back, and the request gets 503 "busy, retry"."""

    db_statement_timeout_seconds: float = Field(default=10.0, gt=0)
    """Postgres `statement_timeout` of the API's statements (deleting a series is exempt).
    With the pool and lock timeouts it bounds a write request to well under 30 s, below any
    sane client timeout: a write either commits in time or is rolled back and refused with
    503 "busy, retry", so no client gives up on a write that commits later."""

    bootstrap_admin_key: str | None = Field(default=None, repr=False)
    """If set and no API key exists yet, an admin key with this value is created at start."""

    host: str = "127.0.0.1"
    """Address `vigil serve` binds to."""

    port: int = 8000
    """Port `vigil serve` listens on."""

    workers: int = Field(default=1, ge=1)
    """API processes for `vigil serve`; more than one switches metrics to multiprocess mode."""

    embedded_worker: bool = True
    """Run the training worker beside `vigil serve` (SQLite default); false with `vigil worker`."""

    worker_metrics_port: int = 9101
    """Port on which `vigil worker` serves its own Prometheus metrics (0 disables it)."""

    log_level: str = "INFO"
    """Root log level (DEBUG, INFO, WARNING, ERROR)."""

    log_format: Literal["json", "text"] = "json"
    """`json` for one JSON object per line (production), `text` for humans."""

    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS, as a JSON list. Empty means CORS is off."""

    retrain_after_labels: int = Field(default=1, ge=0)
    """New labels on a series with an active model that arm an automatic retrain (0: never).
    An armed retrain starts once no label has arrived for `retrain_quiet_seconds`."""

    retrain_quiet_seconds: float = Field(default=30.0, ge=0)
    """Quiet period before a retrain that labels queued starts: each new label restarts it,
    so a batch of verdicts trains one version that includes all of them."""

    min_train_windows: int = Field(default=8, ge=2)
    """A training job fails with a clear error when a series has fewer windows than this."""

    train_steps: int | None = Field(default=None, ge=1)
    """Optimiser steps per training job. Unset: about 30 passes over the training windows,
    clamped to [`train_min_steps`, `train_max_steps`]."""

    train_min_steps: int = Field(default=600, ge=1)
    """Floor of the automatic step budget; early stopping never ends a job sooner."""

    train_class_min_steps: int = Field(default=1500, ge=1)
    """The floor instead of `train_min_steps` when labels teach the class head classes of kind
    `normal` (regimes, activities): it learns more slowly than the reconstruction."""

    train_max_steps: int = Field(default=3000, ge=1)
    """Ceiling of the automatic step budget (bounds a job's time on large series)."""

    train_batch_size: int | None = Field(default=None, ge=4)
    """Windows per training batch. Unset: scaled to the data (16 to 64)."""

    train_members: int = Field(default=3, ge=1, le=16)
    """Networks per model version, trained from different seeds, their scores averaged: a
    small ensemble cuts the spread of detection quality between training seeds (each
    member costs its training and scoring time)."""

    train_patience: int = Field(default=10, ge=1)
    """Validation checks (about 30 per job) without improvement before training stops."""

    train_threads: int = Field(default=1, ge=1)
    """torch threads a training job may use, so that training does not starve scoring."""

    train_nice: int = Field(default=10, ge=0, le=19)
    """How much lower a training job's CPU priority is (Unix nice steps; 0: unchanged)."""

    train_sched_idle: bool = True
    """Train under Linux's SCHED_IDLE policy: only on CPU time nothing else wants, so that
    scoring on the same machine takes the CPU back at once. A machine scoring flat out then
    trains slowly, or not at all until the load drops; false trains at `train_nice` only."""

    train_max_windows: int = Field(default=20_000, ge=16)
    """Most recent windows a training job uses at most (bounds memory and time)."""

    activation_tolerance: float = Field(default=0.02, ge=0.0)
    """Activate a new version if its validation loss is within this share of the active one's."""

    job_lease_seconds: float = Field(default=60.0, gt=0)
    """A running job whose lease was not renewed for this long goes to another worker."""

    job_poll_seconds: float = Field(default=1.0, gt=0)
    """How often an idle worker looks for queued jobs."""

    job_max_attempts: int = Field(default=3, ge=1)
    """A job that has been claimed this many times without finishing is marked failed."""

    score_threads: int = Field(default=1, ge=1)
    """torch threads of each API process for scoring."""

    score_process: bool = True
    """Run the model in a child process of each API process (`python -m app.scoring.process`),
    where it does not share the GIL with the event loop. false scores on a thread of the API
    process: ~280 MiB less memory and one process fewer, but at high request rates the model then
    waits for the event loop's GIL (threaded scoring as session 2 left it reached two thirds
    of the child's throughput at concurrency 32; benchmarks/RESULTS.md)."""

    score_samples: int = Field(default=1, ge=1, le=64)
    """Monte Carlo samples L of the reconstruction probability."""

    score_retention_hours: float = Field(default=24.0 * 7, gt=0)
    """How long scored windows are kept so that feedback can point at them."""

    score_log_flush_seconds: float = Field(default=0.5, gt=0)
    """How often the batched score log is written to the database."""

    max_score_windows: int = Field(default=1024, ge=1)
    """Windows one /v1/score request may carry."""

    max_step_detail: int = Field(default=262_144, ge=1)
    """Window steps (windows x window size) one `/v1/score?detail=steps` answer may detail:
    each step adds a number to the JSON, and 1,024 windows of 4,096 steps made a 75 MiB
    answer. Over the limit is a 422 naming `detail`; send fewer windows or drop the detail."""

    max_points_rows: int = Field(default=200_000, ge=1)
    """Rows one ingestion request may carry."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413 before they are read whole."""

    bulk_concurrency: int = Field(default=2, ge=1)
    """Ingestion bodies over `VIGIL_BULK_MIN_BYTES` each API process parses and writes at
    once; more wait their turn, so that a burst of big bodies bounds memory and CPU."""

    bulk_wait_seconds: float = Field(default=30.0, gt=0)
    """How long a big ingestion body waits for its turn before it is refused with 503 "busy,
    retry" and Retry-After."""

    bulk_min_bytes: int = Field(default=1024 * 1024, ge=0)
    """Ingestion bodies larger than this take a turn under `VIGIL_BULK_CONCURRENCY`."""

    batch_max_size: int = Field(default=256, ge=1)
    """Most windows the micro-batcher puts in one model call."""

    batch_max_wait_ms: float = Field(default=0.0, ge=0)
    """How long an idle micro-batcher holds a batch open for more requests. 0 batches only
    what arrives while the model is busy, so a lone request never waits."""

    score_piece_steps: int = Field(default=65_536, ge=1)
    """Window steps (windows x window size) one request puts in one model call: a bigger
    request is scored a piece at a time, and other requests run between its pieces, so
    that one request of 1,024 windows of 4,096 steps does not stall all others for 20 s."""

    model_cache_size: int = Field(default=64, ge=1)
    """Loaded models each API process keeps; older ones are dropped and reloaded on demand."""

    model_poll_seconds: float = Field(default=2.0, gt=0)
    """How often an API process checks which model version is active (hot swap)."""

    rate_limit_per_minute: int = Field(default=0, ge=0)
    """Requests per API key per minute (0 disables the limit)."""

    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """How long one webhook delivery attempt may take (connect, send, first response byte)."""

    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    """Attempts at a webhook delivery before it is marked `failed`."""

    webhook_backoff_seconds: float = Field(default=10.0, gt=0)
    """Wait before the first retry of a webhook delivery; each next wait is three times
    longer (10 s, 30 s, 90 s, ...), with +/-20 % jitter, up to `webhook_backoff_max_seconds`."""

    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    """Longest wait between two attempts at a webhook delivery."""

    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    """How often a worker's deliverer looks for due webhook deliveries when idle."""

    webhook_retention_hours: float = Field(default=24.0 * 30, gt=0)
    """How long delivered and failed webhook deliveries stay listed before they are purged."""

    webhook_concurrency: int = Field(default=4, ge=1, le=64)
    """Webhook deliveries one worker posts at once (a slow receiver holds up one of them)."""

    # -- time, missing data and retention (README: "Gaps and missing values", "Retention") --
    max_gap_factor: float = Field(default=3.0, gt=1.0, le=1000.0)
    """A series without `max_gap`: no window spans a gap longer than this many median
    sampling intervals (the interval recorded by the model at training, else the points')."""

    max_missing_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    """A window with a larger share of missing values is reported as not scored
    (`missing_data`) rather than scored, and left out of training."""

    points_retention_days: float | None = Field(default=None, gt=0)
    """Points older than this many days are deleted by the worker (unset: kept forever)."""

    scores_retention_days: float | None = Field(default=None, gt=0)
    """Window scores of the detection history older than this many days are deleted by the
    worker (unset: kept forever). The score log that feedback points at keeps
    `score_retention_hours`."""

    alarms_retention_days: float | None = Field(default=None, gt=0)
    """Alarms older than this many days are deleted by the worker (unset: kept forever)."""

    retention_batch_rows: int = Field(default=5000, ge=1)
    """Rows one retention DELETE removes at most: short transactions, never a long table lock."""
    detect_enabled: bool = True
    """Run the detector in each API process: it scores the windows that ingestion adds to a
    series with an active model and keeps alarms (app/detection/). Processes share the work
    through the database, so no window is scored twice at once."""

    detect_lag_seconds: float = Field(default=5.0, gt=0)
    """The most time from a committed point batch to its stored window scores."""

    detect_poll_seconds: float = Field(default=0.25, gt=0)
    """How often an idle detector looks for series with new points."""

    detect_max_windows: int = Field(default=1024, ge=1)
    """Windows one detector pass scores at most; the rest of a large batch goes to the next."""

    detect_threads: int = Field(default=2, ge=1, le=32)
    """Detector threads per API process. Each scores one series at a time; several keep the
    lag short when many series stream at once (one series is never scored by two)."""

    detect_lease_seconds: float = Field(default=60.0, gt=0)
    """A series held by a detector that stopped responding goes to another after this long."""

    alarm_close_after: int = Field(default=3, ge=1)
    """Quiet windows after an alarm's last flagged one that close it (at least the series'
    `alarm_merge_gap` + 1, so that a closed alarm could not have grown any more)."""

    console_session_secret: str | None = Field(default=None, repr=False)
    """Signs console sessions; unset: a random one per process (sign-ins end at restart, and
    with several workers a session only works on the process that made it). Set it then."""

    console_session_hours: float = Field(default=12.0, gt=0)
    """How long a console sign-in lasts."""

    console_stale_minutes: float = Field(default=60.0, gt=0)
    """The console calls a series' data stale when its newest point is older than this."""

    @model_validator(mode="after")
    def _enforce_production_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        key = self.bootstrap_admin_key
        if key is not None and (
            key.lower() in PLACEHOLDER_SECRETS
            or len(key) < MIN_BOOTSTRAP_KEY_LENGTH
            or any(marker in key.lower() for marker in ("changeme", "change-me"))
        ):
            raise ValueError(
                "VIGIL_BOOTSTRAP_ADMIN_KEY is a placeholder or shorter than "
                f"{MIN_BOOTSTRAP_KEY_LENGTH} characters; set a random secret in production"
            )
        if "database_url" not in self.model_fields_set:
            raise ValueError("VIGIL_DATABASE_URL must be set explicitly in production")
        if "changeme" in self.database_url or "change-me" in self.database_url:
            raise ValueError("VIGIL_DATABASE_URL still holds a placeholder password")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
