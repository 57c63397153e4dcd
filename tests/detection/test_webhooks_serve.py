"""Webhooks through a real `vigil serve`: its embedded worker delivers, outbox rows written
before the server started included, and an activation through the API reaches the receiver."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx
import orjson
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import MODEL_ACTIVE, MODEL_CANDIDATE, ModelVersion
from app.detection.events import emit
from app.detection.webhooks import create_webhook
from app.schemas.webhooks import WebhookCreate
from app.security import create_key
from tests.utils.proc import serve
from tests.utils.receiver import receiver
from tests.utils.stream import create_series

pytestmark = pytest.mark.slow

SECRET = "whsec_serve-test-secret-000"


def test_the_embedded_worker_of_vigil_serve_delivers(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions)
    with sessions() as session, session.begin():
        _, plain = create_key(session=session, name="ops", scopes=["admin"])
        for number, status in ((1, MODEL_ACTIVE), (2, MODEL_CANDIDATE)):
            session.add(
                ModelVersion(
                    series_id=series_id,
                    version=number,
                    status=status,
                    artifact=b"unused",  # activation never reads it
                    sha256=hashlib.sha256(b"unused").hexdigest(),
                    metrics={},
                )
            )
    headers = {"Authorization": f"Bearer {plain}"}
    with receiver() as hook:
        with sessions() as session:
            body = WebhookCreate(
                url=hook.url, secret=SECRET, events=["alarm.opened", "model.activated"]
            )
            hook_id = create_webhook(session=session, body=body).id
        # Queued while no Vigil process runs: the server's worker must find it.
        with sessions() as session, session.begin():
            emit(session=session, event="alarm.opened", data={"alarm_id": 1})
        with (
            serve(
                database_url,
                VIGIL_EMBEDDED_WORKER="true",
                VIGIL_SCORE_PROCESS="false",
                VIGIL_WEBHOOK_POLL_SECONDS="0.1",
            ) as (base, _process),
            httpx.Client(base_url=base, headers=headers, timeout=30) as client,
        ):
            assert client.post(f"/v1/series/{series_id}/models/2/activate").status_code == 200
            received = hook.wait_for(2, timeout=60)
            deadline = time.monotonic() + 10
            while True:
                listed = client.get(f"/v1/webhooks/{hook_id}/deliveries").json()["deliveries"]
                if all(d["status"] == "delivered" for d in listed) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    events = sorted(r.headers["vigil-event"] for r in received)
    assert events == ["alarm.opened", "model.activated"]
    for request in received:
        fields = dict(part.split("=", 1) for part in request.headers["vigil-signature"].split(","))
        mac = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + request.body, hashlib.sha256)
        assert hmac.compare_digest(mac.hexdigest(), fields["v1"])
    activated = next(
        orjson.loads(r.body) for r in received if r.headers["vigil-event"] == "model.activated"
    )
    assert activated["data"]["series_id"] == series_id
    assert activated["data"]["version"] == 2
    assert sorted(d["status"] for d in listed) == ["delivered", "delivered"]
    assert all(d["attempts"] == 1 for d in listed)
