"""Webhooks and their deliveries as the API shows them."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.detection.events import EVENTS
from app.schemas.common import UtcDateTime

EVENT_LIST = ", ".join(f"`{event}`" for event in EVENTS)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    url: str = Field(
        max_length=2000,
        description="Where deliveries are POSTed: an absolute `http` or `https` URL.",
        examples=["https://ops.example.com/vigil-events"],
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=200,
        description=(
            "The HMAC-SHA256 key that signs every delivery (`Vigil-Signature`), 16 to 200 "
            "characters. Omit it and Vigil makes a random one and returns it in this response; "
            "no later response shows it."
        ),
    )
    events: list[str] = Field(
        min_length=1,
        max_length=len(EVENTS),
        description=(
            f"The events to deliver, any of {EVENT_LIST}. The alarm events carry the alarm as "
            "GET /v1/alarms shows it; an alarm removed because later scores changed it gets "
            "a last `alarm.closed` with `removed`: `withdrawn` (no flagged window left) or "
            "`merged` (and `merged_into`, the id of the alarm that now holds its windows)."
        ),
        examples=[["alarm.opened", "alarm.closed", "job.failed"]],
    )
    enabled: bool = Field(default=True, description="false queues nothing for this webhook.")


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    enabled: bool
    secret_hint: str = Field(
        description="The secret's last 4 characters, to tell secrets apart; never the secret."
    )
    created_at: UtcDateTime


class WebhookCreated(WebhookOut):
    secret: str | None = Field(
        description=(
            "The secret Vigil made, when the request had none; shown only in this response. "
            "null when the request gave one."
        )
    )


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: none.")


class DeliveryAttempt(BaseModel):
    attempt: int = Field(description="1 for the first attempt.")
    at: UtcDateTime = Field(description="When the attempt started.")
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None = Field(description="Why the attempt failed; null when it succeeded.")
    duration_ms: float
    worker: str | None = Field(default=None, description="The worker that made the attempt.")


class DeliveryOut(BaseModel):
    id: uuid.UUID = Field(
        description="The idempotency id: body `id` and `Vigil-Delivery` header, on every attempt."
    )
    webhook_id: int
    event: str
    status: Literal["pending", "delivered", "failed"] = Field(
        description=(
            "`pending` (queued, or waiting for its next attempt), `delivered` (a 2xx answer) "
            "or `failed` (every attempt failed; no more are made)."
        )
    )
    attempts: int = Field(description="Attempts made, the running one included.")
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: UtcDateTime | None = Field(
        description="When the next attempt is due (null once delivered or failed)."
    )
    created_at: UtcDateTime
    delivered_at: UtcDateTime | None
    history: list[DeliveryAttempt] = Field(description="Every finished attempt, oldest first.")
    payload: dict[str, Any] = Field(description="The JSON body every attempt sends.")


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: none.")
