"""Webhook deliveries end to end: `emit` in a transaction, a real deliverer, and a real
HTTP receiver on 127.0.0.1 that checks signatures the way the README tells users to."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import DELIVERY_DELIVERED, DELIVERY_FAILED, DELIVERY_PENDING, WebhookDelivery
from app.db.session import make_engine, make_sessionmaker
from app.detection.events import EVENTS, emit
from app.detection.webhooks import Deliverer, create_webhook, delete_webhook, lease_seconds
from app.schemas.webhooks import WebhookCreate
from app.training.worker import Worker
from tests.utils.receiver import Received, closed_port_url, receiver
from tests.utils.stream import create_series, insert_points, make_stream
from tests.utils.trained import queue_job, train_now

SECRET = "whsec_test-secret-0123456789"
SIGNATURE_TOLERANCE_SECONDS = 300


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Retries within a fraction of a second, so that a test sees several of them."""
    return settings.model_copy(
        update={
            "webhook_timeout_seconds": 2.0,
            "webhook_backoff_seconds": 0.1,
            "webhook_backoff_max_seconds": 5.0,
            "webhook_max_attempts": 4,
            "webhook_poll_seconds": 0.02,
        }
    )


def add_webhook(
    sessions: sessionmaker[Session], url: str, events: tuple[str, ...] = EVENTS, **extra: Any
) -> int:
    with sessions() as session:
        body = WebhookCreate(url=url, secret=SECRET, events=list(events), **extra)
        return create_webhook(session=session, body=body).id


def emit_now(sessions: sessionmaker[Session], event: str, **data: Any) -> None:
    with sessions() as session, session.begin():
        emit(session=session, event=event, data=data)


def deliveries(sessions: sessionmaker[Session]) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def verify(secret: str, request: Received) -> dict[str, Any]:
    """Check a delivery as a receiver should (README "Notifications"), independently of
    Vigil's code: HMAC-SHA256 of "<t>.<body>", a fresh timestamp; returns the payload."""
    fields = dict(part.split("=", 1) for part in request.headers["vigil-signature"].split(","))
    timestamp = int(fields["t"])
    assert abs(time.time() - timestamp) < SIGNATURE_TOLERANCE_SECONDS
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    payload: dict[str, Any] = orjson.loads(request.body)
    return payload


def run_until(deliverer: Deliverer, done: Callable[[], bool], timeout: float = 15.0) -> None:
    """Run the deliverer's loop on its thread, as a worker does, until `done()`."""
    stop = threading.Event()
    thread = threading.Thread(target=deliverer.run_forever, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, "deliveries did not settle in time"
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_delivery_arrives_signed_with_its_idempotency_id(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    with receiver() as hook:
        add_webhook(sessions, hook.url)
        emit_now(sessions, "alarm.opened", alarm_id=7, series="pump-1", score=4.25)
        assert Deliverer(fast, sessions=sessions, name="d1").run_once() == 1
        (request,) = hook.wait_for(1)
    payload = verify(SECRET, request)
    (row,) = deliveries(sessions)
    assert payload["id"] == str(row.id) == request.headers["vigil-delivery"]
    uuid.UUID(payload["id"])
    assert payload["event"] == "alarm.opened" == request.headers["vigil-event"]
    assert payload["data"] == {"alarm_id": 7, "series": "pump-1", "score": 4.25}
    assert payload["created"].endswith("Z")
    datetime.fromisoformat(payload["created"])
    assert request.headers["content-type"] == "application/json"
    assert request.headers["vigil-attempt"] == "1"
    assert request.headers["user-agent"].startswith("Vigil-Webhooks/")
    assert row.status == DELIVERY_DELIVERED
    assert row.attempts == 1
    assert row.last_status_code == 200
    assert row.delivered_at is not None
    assert [entry["status_code"] for entry in row.history] == [200]


def test_a_wrong_secret_fails_verification(sessions: sessionmaker[Session], fast: Settings) -> None:
    with receiver() as hook:
        add_webhook(sessions, hook.url)
        emit_now(sessions, "alarm.closed", alarm_id=1)
        Deliverer(fast, sessions=sessions, name="d1").run_once()
        (request,) = hook.wait_for(1)
    with pytest.raises(AssertionError):
        verify("whsec_another-secret-000000", request)
    tampered = Received(
        request.path, request.headers, request.body.replace(b"1", b"2"), request.at, 200
    )
    with pytest.raises(AssertionError):
        verify(SECRET, tampered)


def test_a_500_is_retried_with_the_same_id_and_body(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    with receiver(script=[500]) as hook:
        add_webhook(sessions, hook.url)
        emit_now(sessions, "alarm.verdict", alarm_id=3, verdict="false_positive")
        deliverer = Deliverer(fast, sessions=sessions, name="d1")
        assert deliverer.run_once() == 1
        (row,) = deliveries(sessions)
        assert row.status == DELIVERY_PENDING
        assert row.attempts == 1
        assert row.last_status_code == 500
        assert row.last_error == "HTTP 500"
        assert row.next_attempt_at is not None
        waits = (row.next_attempt_at - datetime.fromisoformat(row.history[0]["at"])).total_seconds()
        assert waits >= 0.8 * fast.webhook_backoff_seconds  # its backoff, jitter included
        run_until(deliverer, lambda: deliveries(sessions)[0].status != DELIVERY_PENDING)
        first, second = hook.wait_for(2)
    assert [first.status, second.status] == [500, 200]
    assert first.headers["vigil-delivery"] == second.headers["vigil-delivery"] == str(row.id)
    assert first.body == second.body
    assert [first.headers["vigil-attempt"], second.headers["vigil-attempt"]] == ["1", "2"]
    verify(SECRET, second)
    (row,) = deliveries(sessions)
    assert row.status == DELIVERY_DELIVERED
    assert row.attempts == 2
    assert [(e["attempt"], e["status_code"]) for e in row.history] == [(1, 500), (2, 200)]
    assert row.history[0]["error"] == "HTTP 500"
    assert row.history[1]["error"] is None


def test_a_receiver_that_is_down_gets_growing_backoff_then_failed(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    fast = fast.model_copy(update={"webhook_backoff_seconds": 0.2})
    add_webhook(sessions, closed_port_url())
    emit_now(sessions, "job.failed", job_id=5, series_id=1, error="boom")
    deliverer = Deliverer(fast, sessions=sessions, name="d1")
    run_until(deliverer, lambda: deliveries(sessions)[0].status == DELIVERY_FAILED)
    (row,) = deliveries(sessions)
    assert row.attempts == fast.webhook_max_attempts == len(row.history)
    assert row.last_status_code is None
    assert row.last_error is not None and "ConnectError" in row.last_error
    assert row.delivered_at is None
    starts = [datetime.fromisoformat(entry["at"]) for entry in row.history]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # Nominal waits 0.2 s, 0.6 s, 1.8 s with +/-20 % jitter, each after the attempt ended:
    # a gap is at least its wait (however loaded the machine), and the waits grow.
    base = fast.webhook_backoff_seconds
    for number, gap in enumerate(gaps):
        assert gap >= 0.8 * base * 3**number, gaps
    assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0], gaps
    time.sleep(0.2)
    assert deliverer.run_once() == 0  # failed for good: no more attempts


def test_events_not_subscribed_are_not_delivered(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    with receiver() as hook:
        add_webhook(sessions, hook.url, events=("alarm.opened",))
        add_webhook(sessions, hook.url, events=("alarm.closed",), enabled=False)
        gone = add_webhook(sessions, hook.url, events=("alarm.closed",))
        with sessions() as session:
            delete_webhook(session=session, webhook_id=gone)
        emit_now(sessions, "alarm.closed", alarm_id=1)
        emit_now(sessions, "model.activated", series_id=1, version=2)
        assert deliveries(sessions) == []
        emit_now(sessions, "alarm.opened", alarm_id=2)
        deliverer = Deliverer(fast, sessions=sessions, name="d1")
        assert deliverer.run_once() == 1
        assert deliverer.run_once() == 0
        time.sleep(0.1)
    assert [r.headers["vigil-event"] for r in hook.received] == ["alarm.opened"]


def test_a_rolled_back_transaction_queues_nothing(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    add_webhook(sessions, closed_port_url())
    with pytest.raises(RuntimeError), sessions() as session, session.begin():
        emit(session=session, event="alarm.opened", data={"alarm_id": 1})
        raise RuntimeError("the alarm's own write failed")
    assert deliveries(sessions) == []
    with pytest.raises(ValueError, match="unknown event"), sessions() as session:
        emit(session=session, event="alarm.exploded", data={})


def test_outbox_rows_survive_a_worker_restart(
    database_url: str, sessions: sessionmaker[Session], fast: Settings
) -> None:
    """Events queued while receivers fail, and one claimed by a worker that died mid-attempt,
    are all delivered by a new worker (new engine, new Worker) once the receiver is back."""
    fast = fast.model_copy(update={"webhook_timeout_seconds": 0.5})  # a 2.5 s lease
    with receiver(default=503) as hook:
        add_webhook(sessions, hook.url)
        for number in range(3):
            emit_now(sessions, "alarm.opened", alarm_id=number)
        first = Worker(fast, sessions=sessions, name="first")
        thread = threading.Thread(target=first.run_forever, daemon=True)
        thread.start()
        hook.wait_for(3)
        first.stop_event.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        emit_now(sessions, "alarm.closed", alarm_id=0)
        # A deliverer that claims this one and dies before it posts or records anything.
        (dead_claim,) = Deliverer(fast, sessions=sessions, name="dead").claim(1)
        claimed_at = time.monotonic()
        hook.default = 200
        received_before = len(hook.received)
        engine: Engine = make_engine(database_url, role="worker")
        try:
            fresh = make_sessionmaker(engine)
            second = Worker(fast, sessions=fresh, name="second")
            thread = threading.Thread(target=second.run_forever, daemon=True)
            thread.start()
            run_until_delivered = time.monotonic() + lease_seconds(fast) + 10
            while any(row.status != DELIVERY_DELIVERED for row in deliveries(sessions)):
                assert time.monotonic() < run_until_delivered, [
                    (r.status, r.attempts, r.last_error) for r in deliveries(sessions)
                ]
                time.sleep(0.05)
            second.stop_event.set()
            thread.join(timeout=10)
        finally:
            engine.dispose()
    rows = {str(row.id): row for row in deliveries(sessions)}
    assert len(rows) == 4
    delivered = [r for r in hook.received[received_before:] if r.status == 200]
    assert sorted(r.headers["vigil-delivery"] for r in delivered) == sorted(rows)
    for request in delivered:
        verify(SECRET, request)
    # The abandoned claim went out only once its lease had run out.
    (resent,) = [r for r in delivered if r.headers["vigil-delivery"] == str(dead_claim.id)]
    assert resent.at - claimed_at >= lease_seconds(fast) - 0.1
    # The dead worker's attempt counts, and left no entry in the history.
    abandoned = rows[str(dead_claim.id)]
    assert abandoned.attempts == dead_claim.attempt + 1 == len(abandoned.history) + 1
    assert all(row.attempts >= 2 for row in rows.values())


def test_two_deliverers_never_send_a_delivery_twice_at_once(
    database_url: str, sessions: sessionmaker[Session], fast: Settings
) -> None:
    count = 40
    with receiver() as hook:
        hook.delay = 0.05  # long enough for the deliverers' claims to interleave
        add_webhook(sessions, hook.url)
        for number in range(count):
            emit_now(sessions, "alarm.opened", alarm_id=number)
        engines = [make_engine(database_url, role="worker") for _ in range(2)]
        try:
            deliverers = [
                Deliverer(fast, sessions=make_sessionmaker(engine), name=f"d{i}")
                for i, engine in enumerate(engines)
            ]
            stop = threading.Event()
            threads = [
                threading.Thread(target=d.run_forever, args=(stop,), daemon=True)
                for d in deliverers
            ]
            for thread in threads:
                thread.start()
            hook.wait_for(count, timeout=30)
            time.sleep(0.3)  # a double send would arrive now
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        finally:
            for engine in engines:
                engine.dispose()
    ids = [r.headers["vigil-delivery"] for r in hook.received]
    assert len(ids) == count == len(set(ids))
    assert max(hook.max_in_flight.values()) == 1
    attempts = [entry for row in deliveries(sessions) for entry in row.history]
    assert len(attempts) == count
    assert {entry["worker"] for entry in attempts} == {"d0", "d1"}  # both took a share
    assert all(row.status == DELIVERY_DELIVERED for row in deliveries(sessions))


@pytest.mark.slow
def test_model_activated_and_job_failed_reach_the_receiver(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    with receiver() as hook:
        add_webhook(sessions, hook.url, events=("model.activated", "job.failed"))
        series_id = create_series(sessions)
        insert_points(sessions, series_id, make_stream(400))
        job_id = train_now(sessions, fast, series_id)
        empty_id = create_series(sessions, name="empty")
        failed_job = queue_job(sessions, empty_id)
        Worker(fast, sessions=sessions).run_once()
        deliverer = Deliverer(fast, sessions=sessions, name="d1")
        assert deliverer.run_once() == 2
        received = hook.wait_for(2)
    payloads = {p["event"]: p for p in (verify(SECRET, r) for r in received)}
    activated = payloads["model.activated"]["data"]
    assert activated["series_id"] == series_id
    assert activated["version"] == 1
    assert activated["by"] == f"training job {job_id}"
    assert activated["activated_at"].endswith("Z")
    failed = payloads["job.failed"]["data"]
    assert failed["job_id"] == failed_job
    assert failed["series_id"] == empty_id
    assert failed["error"]


def readme_verify() -> Callable[[str, str, bytes], bool]:
    """The `verify` function of the README's "Notifications" section, exactly as printed."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    function: Callable[[str, str, bytes], bool] = namespace["verify"]
    return function


def test_the_readme_snippet_verifies_a_real_delivery(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    with receiver() as hook:
        add_webhook(sessions, hook.url)
        emit_now(sessions, "alarm.opened", alarm_id=11, note="ünïcode ✓")
        Deliverer(fast, sessions=sessions, name="d1").run_once()
        (request,) = hook.wait_for(1)
    verify_snippet = readme_verify()
    header = request.headers["vigil-signature"]
    assert verify_snippet(SECRET, header, request.body)
    assert not verify_snippet("whsec_not-the-secret-00000", header, request.body)
    assert not verify_snippet(SECRET, header, request.body + b" ")
    stale = f"t={int(time.time()) - 3600},{header.split(',', 1)[1]}"
    assert not verify_snippet(SECRET, stale, request.body)


def test_housekeeping_purges_old_finished_deliveries_only(
    sessions: sessionmaker[Session], fast: Settings
) -> None:
    add_webhook(sessions, closed_port_url())
    for number in range(3):
        emit_now(sessions, "alarm.opened", alarm_id=number)
    old = datetime.now(UTC) - timedelta(hours=fast.webhook_retention_hours + 1)
    with sessions() as session, session.begin():
        rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.body)).all()
        rows[0].status, rows[0].created_at = DELIVERY_DELIVERED, old
        rows[1].status, rows[1].created_at = DELIVERY_FAILED, old
        rows[2].created_at = old  # still pending: kept, however old
        pending_id = rows[2].id
    Worker(fast, sessions=sessions)._housekeeping()
    assert [row.id for row in deliveries(sessions)] == [pending_id]
