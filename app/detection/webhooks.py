"""Webhooks: their management, and the deliverer that posts the outbox to them.

`app/detection/events.py` `emit` writes one `webhook_deliveries` row per subscribed webhook
in the transaction of the change it announces (a transactional outbox). A `Deliverer`,
running on a thread of every training worker, claims due rows, POSTs them, and records
each attempt:

- claiming is one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)` on
  Postgres (any number of workers, none takes a row another holds) and the same statement
  under SQLite's single writer. A claim counts the attempt and leases the row (its
  `next_attempt_at` moves past the attempt's longest duration), so the row of a worker that
  died mid-attempt is taken again once that lease has passed;
- a 2xx answer delivers; anything else (another status, a timeout, a refused connection)
  schedules a retry after an exponential backoff with jitter, until
  `webhook_max_attempts`, then the delivery is `failed`;
- each POST is signed like Stripe's: `Vigil-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
  "<t>.<body>">`, so a receiver can check both origin and freshness (README:
  "Notifications").
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import orjson
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import __version__
from app.config import Settings
from app.db.base import utcnow
from app.db.models import (
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    Webhook,
    WebhookDelivery,
)
from app.detection.events import EVENTS, rfc3339
from app.errors import InvalidInput, NotFound
from app.metrics import WEBHOOK_DELIVERIES
from app.schemas.paging import decode_cursor, page_of
from app.schemas.webhooks import (
    DeliveryList,
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "Vigil-Signature"
EVENT_HEADER: Final = "Vigil-Event"
DELIVERY_HEADER: Final = "Vigil-Delivery"
ATTEMPT_HEADER: Final = "Vigil-Attempt"
BACKOFF_FACTOR: Final = 3.0
JITTER: Final = 0.2
"""Each wait is drawn from +/-20 % around its nominal value, so that deliveries that failed
together (a receiver's outage) do not all retry in the same second."""
LEASE_MARGIN_SECONDS: Final = 1.0
MAX_ERROR_CHARS: Final = 300
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# -- management ---------------------------------------------------------------------------------


def _validate(body: WebhookCreate) -> None:
    if any(ch.isspace() or not ch.isprintable() for ch in body.url):
        raise InvalidInput("must not contain spaces or control characters", field="url")
    try:
        parts = urlsplit(body.url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
        host = httpx.URL(body.url).host
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidInput(f"is not a valid URL ({exc})", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(
            f"must be an absolute http or https URL, not {body.url[:100]!r}", field="url"
        )
    if not host:
        raise InvalidInput("has no host name", field="url")
    for index, event in enumerate(body.events):
        if event not in EVENTS:
            raise InvalidInput(
                f"unknown event {event[:64]!r}; one of {', '.join(EVENTS)}",
                field=f"events.{index}",
            )
    if len(set(body.events)) != len(body.events):
        raise InvalidInput("lists an event twice", field="events")


def _out(hook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=hook.id,
        url=hook.url,
        events=list(hook.events),
        enabled=hook.enabled,
        secret_hint=f"…{hook.secret[-4:]}",
        created_at=hook.created_at,
    )


def create_webhook(*, session: Session, body: WebhookCreate) -> WebhookCreated:
    _validate(body)
    made = None if body.secret is not None else f"whsec_{secrets.token_urlsafe(32)}"
    hook = Webhook(
        url=body.url,
        secret=body.secret if body.secret is not None else made,
        events=[event for event in EVENTS if event in body.events],
        enabled=body.enabled,
        created_at=utcnow(),
    )
    session.add(hook)
    session.commit()
    return WebhookCreated(**_out(hook).model_dump(), secret=made)


def _live(session: Session, webhook_id: int) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.deleted_at is not None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    return hook


def get_webhook(*, session: Session, webhook_id: int) -> WebhookOut:
    return _out(_live(session, webhook_id))


def list_webhooks(*, session: Session, limit: int, cursor: str | None) -> WebhookList:
    after = decode_cursor(cursor, arity=1)
    query = select(Webhook).where(Webhook.deleted_at.is_(None)).order_by(Webhook.id)
    if after is not None:
        query = query.where(Webhook.id > after[0])
    rows = session.scalars(query.limit(limit + 1)).all()
    items, next_cursor = page_of(rows, limit=limit, key=lambda hook: (hook.id,))
    return WebhookList(webhooks=[_out(hook) for hook in items], next_cursor=next_cursor)


def delete_webhook(*, session: Session, webhook_id: int) -> None:
    """Delete a webhook: its pending deliveries fail at once, its history stays readable in
    the database, and its secret is wiped."""
    hook = _live(session, webhook_id)
    now = utcnow()
    hook.deleted_at = now
    hook.enabled = False
    hook.secret = ""
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.webhook_id == webhook_id,
            WebhookDelivery.status == DELIVERY_PENDING,
            WebhookDelivery.lease_owner.is_(None),
        )
        .values(status=DELIVERY_FAILED, next_attempt_at=None, last_error="webhook deleted")
    )
    session.commit()


def _delivery_out(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut.model_validate(
        {
            "id": row.id,
            "webhook_id": row.webhook_id,
            "event": row.event,
            "status": row.status,
            "attempts": row.attempts,
            "last_status_code": row.last_status_code,
            "last_error": row.last_error,
            "next_attempt_at": row.next_attempt_at if row.status == DELIVERY_PENDING else None,
            "created_at": row.created_at,
            "delivered_at": row.delivered_at,
            "history": row.history,
            "payload": orjson.loads(row.body),
        }
    )


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def list_deliveries(
    *,
    session: Session,
    webhook_id: int,
    limit: int,
    cursor: str | None,
    status: str | None = None,
) -> DeliveryList:
    """A webhook's deliveries, newest first."""
    _live(session, webhook_id)
    after = decode_cursor(cursor, arity=2)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if after is not None:
        micros, last_id = after
        if not isinstance(micros, int) or not isinstance(last_id, str):
            raise InvalidInput("is not a cursor of this list", field="cursor")
        try:
            last_uuid = uuid.UUID(last_id)
        except ValueError:
            raise InvalidInput("is not a cursor of this list", field="cursor") from None
        moment = EPOCH + timedelta(microseconds=micros)
        query = query.where(
            or_(
                WebhookDelivery.created_at < moment,
                and_(WebhookDelivery.created_at == moment, WebhookDelivery.id < last_uuid),
            )
        )
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    rows = session.scalars(query.limit(limit + 1)).all()
    items, next_cursor = page_of(
        rows, limit=limit, key=lambda row: (_micros(row.created_at), str(row.id))
    )
    return DeliveryList(deliveries=[_delivery_out(row) for row in items], next_cursor=next_cursor)


def purge_deliveries(*, session: Session, settings: Settings) -> int:
    """Delete the finished deliveries older than `webhook_retention_hours` (worker
    housekeeping); returns how many."""
    cutoff = utcnow() - timedelta(hours=settings.webhook_retention_hours)
    result = session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status.in_((DELIVERY_DELIVERED, DELIVERY_FAILED)),
            WebhookDelivery.created_at < cutoff,
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- signing ------------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `Vigil-Signature` header value: `t=<unix seconds>,v1=<hex HMAC-SHA256>` of
    `"<t>.<body>"` keyed by the webhook's secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery stays with its deliverer: an attempt connects, sends and
    waits for the answer's first bytes, each within `webhook_timeout_seconds`. Past it,
    the deliverer is taken for dead and another may send the delivery again (the receiver
    deduplicates on `Vigil-Delivery`)."""
    return settings.webhook_timeout_seconds * 3 + LEASE_MARGIN_SECONDS


def backoff_seconds(attempt: int, settings: Settings, *, rng: random.Random | None = None) -> float:
    """The wait after failed attempt number `attempt` (1-based): base × 3^(attempt-1), capped,
    with jitter."""
    nominal = min(
        settings.webhook_backoff_seconds * BACKOFF_FACTOR ** (attempt - 1),
        settings.webhook_backoff_max_seconds,
    )
    return nominal * (rng or random).uniform(1 - JITTER, 1 + JITTER)


# -- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    event: str
    body: bytes
    attempt: int
    url: str | None
    """None when the webhook was deleted after the row was queued."""
    secret: str


@dataclass(frozen=True)
class Attempted:
    started: datetime
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Deliverer:
    """Posts due webhook deliveries. Any number may run (one per worker process)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: sessionmaker[Session],
        name: str,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.name = name
        self._client: httpx.Client | None = None  # made on first use: most workers in
        self._pool: ThreadPoolExecutor | None = None  # tests never deliver
        self._thread: threading.Thread | None = None
        # Export every outcome from the start, so that increase() sees the first one.
        for event in EVENTS:
            for outcome in ("delivered", "retry", "failed"):
                WEBHOOK_DELIVERIES.labels(event, outcome)

    # -- the loop --------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        """Deliver on a thread of its own until `stop` is set (the worker's stop event), so
        that notifications go out while a training job runs."""
        self._thread = threading.Thread(
            target=self.run_forever, args=(stop,), name="vigil-deliverer", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                done = self.run_once()
            except SQLAlchemyError as exc:
                log.warning("webhook deliverer: database error %s; retrying", type(exc).__name__)
                done = 0
            except Exception:  # never let one bad row end notifications for good
                log.exception("webhook deliverer: unexpected error; retrying")
                done = 0
            if done == 0:
                stop.wait(self.settings.webhook_poll_seconds)
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self) -> tuple[httpx.Client, ThreadPoolExecutor]:
        if self._client is None or self._pool is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.settings.webhook_timeout_seconds),
                follow_redirects=False,
                headers={"User-Agent": f"Vigil-Webhooks/{__version__}"},
            )
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.webhook_concurrency,
                thread_name_prefix="vigil-webhook",
            )
        return self._client, self._pool

    def run_once(self) -> int:
        """Claim the due deliveries (up to `webhook_concurrency`), post them concurrently and
        record the outcomes. Returns how many were attempted."""
        claimed = self.claim(self.settings.webhook_concurrency)
        if not claimed:
            return 0
        _, pool = self._http()
        results = list(pool.map(self.post, claimed))
        for item, result in zip(claimed, results, strict=True):
            self.record(item, result)
        return len(claimed)

    # -- claiming --------------------------------------------------------------------------
    def claim(self, limit: int) -> list[Claimed]:
        now = utcnow()
        lease = timedelta(seconds=lease_seconds(self.settings))
        with self.sessions() as session, session.begin():
            due = (
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.status == DELIVERY_PENDING,
                    WebhookDelivery.next_attempt_at <= now,
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            rows = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(due.scalar_subquery()))
                .values(
                    attempts=WebhookDelivery.attempts + 1,
                    lease_owner=self.name,
                    next_attempt_at=now + lease,
                )
                .returning(
                    WebhookDelivery.id,
                    WebhookDelivery.webhook_id,
                    WebhookDelivery.event,
                    WebhookDelivery.body,
                    WebhookDelivery.attempts,
                )
                .execution_options(synchronize_session=False)
            ).all()
            hooks = _hooks(session, {row[1] for row in rows})
        claimed = []
        for delivery_id, webhook_id, event, body, attempt in rows:
            hook = hooks.get(webhook_id)
            live = hook is not None and hook[2] is None
            claimed.append(
                Claimed(
                    id=delivery_id,
                    event=event,
                    body=body.encode(),
                    attempt=attempt,
                    url=hook[0] if live and hook else None,
                    secret=hook[1] if live and hook else "",
                )
            )
        return claimed

    # -- posting ---------------------------------------------------------------------------
    def post(self, claimed: Claimed) -> Attempted:
        started = utcnow()
        clock = time.monotonic()
        if claimed.url is None:
            return Attempted(started, None, "webhook deleted", 0.0)
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: claimed.event,
            DELIVERY_HEADER: str(claimed.id),
            ATTEMPT_HEADER: str(claimed.attempt),
            SIGNATURE_HEADER: signature(claimed.secret, int(time.time()), claimed.body),
        }
        status_code: int | None = None
        error: str | None = None
        try:
            # Streamed and never read: a receiver's answer body is of no interest, and a
            # large one must not cost memory or time.
            client, _ = self._http()
            with client.stream(
                "POST", claimed.url, content=claimed.body, headers=headers
            ) as response:
                status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")[:MAX_ERROR_CHARS]
        return Attempted(started, status_code, error, (time.monotonic() - clock) * 1000)

    # -- recording -------------------------------------------------------------------------
    def record(self, claimed: Claimed, result: Attempted) -> None:
        settings = self.settings
        now = utcnow()
        entry: dict[str, Any] = {
            "attempt": claimed.attempt,
            "at": rfc3339(result.started),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": round(result.duration_ms, 1),
            "worker": self.name,
        }
        gone = claimed.url is None
        values: dict[str, Any] = {
            "lease_owner": None,
            "last_status_code": result.status_code,
            "last_error": result.error,
        }
        if result.delivered:
            outcome = "delivered"
            values.update(status=DELIVERY_DELIVERED, delivered_at=now, next_attempt_at=None)
        elif gone or claimed.attempt >= settings.webhook_max_attempts:
            outcome = "failed"
            values.update(status=DELIVERY_FAILED, next_attempt_at=None)
        else:
            outcome = "retry"
            wait = backoff_seconds(claimed.attempt, settings)
            values.update(next_attempt_at=now + timedelta(seconds=wait))
        with self.sessions() as session, session.begin():
            history = session.scalar(
                select(WebhookDelivery.history).where(
                    WebhookDelivery.id == claimed.id, WebhookDelivery.lease_owner == self.name
                )
            )
            if history is None:  # another deliverer took it after this one's lease ran out
                log.warning("webhook delivery %s: lease lost; outcome dropped", claimed.id)
                return
            session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == claimed.id,
                    WebhookDelivery.lease_owner == self.name,
                    WebhookDelivery.status == DELIVERY_PENDING,
                )
                .values(history=[*history, entry], **values)
                .execution_options(synchronize_session=False)
            )
        WEBHOOK_DELIVERIES.labels(claimed.event, outcome).inc()
        context = {"delivery": str(claimed.id), "event": claimed.event, "outcome": outcome}
        if outcome == "delivered":
            log.info("webhook delivery %s delivered", claimed.id, extra=context)
        else:
            log.warning(
                "webhook delivery %s attempt %d: %s (%s)",
                claimed.id,
                claimed.attempt,
                result.error,
                outcome,
                extra=context,
            )


def _hooks(session: Session, ids: Sequence[int] | set[int]) -> dict[int, tuple[str, str, Any]]:
    if not ids:
        return {}
    rows = session.execute(
        select(Webhook.id, Webhook.url, Webhook.secret, Webhook.deleted_at).where(
            Webhook.id.in_(ids)
        )
    ).all()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}
