"""Events Vigil announces to webhooks, and `emit`, which queues them.

`emit` writes one outbox row per enabled webhook subscribed to the event, in the caller's
transaction: the event is queued if and only if the change it announces commits, and a
restart loses none (the deliverer in app/detection/webhooks.py posts them afterwards).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import DELIVERY_PENDING, Webhook, WebhookDelivery

ALARM_OPENED: Final = "alarm.opened"
ALARM_CLOSED: Final = "alarm.closed"
"""An alarm closed, or was removed because later scores changed it (app/detection/alarms.py):
then its data has `removed`, `withdrawn` (no flagged window left) or `merged` (with
`merged_into`, the id of the alarm that now holds its windows), even if it had closed."""
ALARM_VERDICT: Final = "alarm.verdict"
MODEL_ACTIVATED: Final = "model.activated"
JOB_FAILED: Final = "job.failed"

EVENTS: Final = (ALARM_OPENED, ALARM_CLOSED, ALARM_VERDICT, MODEL_ACTIVATED, JOB_FAILED)
"""Every event a webhook may subscribe to."""


def rfc3339(moment: datetime) -> str:
    """`2026-12-04T22:01:02.345678Z`: UTC, with the `Z` that RFC 3339 readers expect."""
    return moment.isoformat().replace("+00:00", "Z")


def emit(*, session: Session, event: str, data: dict[str, Any]) -> None:
    """Queue `event` with `data` (JSON-serialisable; datetimes become RFC 3339 strings) for
    every enabled webhook subscribed to it, in the caller's transaction. Commits nothing."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
    hooks = session.execute(
        select(Webhook.id, Webhook.events).where(
            Webhook.enabled.is_(True), Webhook.deleted_at.is_(None)
        )
    ).all()
    now = utcnow()
    for webhook_id, events in hooks:
        if event not in events:
            continue
        delivery_id = uuid.uuid4()
        body = orjson.dumps(
            {"id": str(delivery_id), "event": event, "created": rfc3339(now), "data": data},
            option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS,
        )
        session.add(
            WebhookDelivery(
                id=delivery_id,
                webhook_id=webhook_id,
                event=event,
                body=body.decode(),
                status=DELIVERY_PENDING,
                attempts=0,
                next_attempt_at=now,
                history=[],
                created_at=now,
            )
        )
