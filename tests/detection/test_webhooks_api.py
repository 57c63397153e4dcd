"""The webhook API: admin-only management, validation, secrets never shown again, the
deliveries list, metrics, and model.activated from an activation through the API."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import MODEL_ACTIVE, MODEL_CANDIDATE, ModelVersion, WebhookDelivery
from app.detection.events import emit
from app.detection.webhooks import Deliverer
from tests.utils.api_helpers import assert_problem, counter_value
from tests.utils.receiver import closed_port_url, receiver
from tests.utils.stream import create_series

Headers = dict[str, str]
SECRET = "whsec_api-test-secret-abcd"
HOOK = {"url": "https://ops.example.com/vigil", "secret": SECRET, "events": ["alarm.opened"]}


def test_create_read_list_and_delete(client: TestClient, admin: Headers) -> None:
    created = client.post("/v1/webhooks", json=HOOK, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/v1/webhooks/{body['id']}"
    assert body["url"] == HOOK["url"]
    assert body["events"] == ["alarm.opened"]
    assert body["enabled"] is True
    assert body["secret_hint"] == "…abcd"
    assert body["secret"] is None  # the caller chose it: not echoed
    made = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/x", "events": ["job.failed", "alarm.closed"]},
        headers=admin,
    ).json()
    assert made["secret"].startswith("whsec_") and len(made["secret"]) >= 40
    assert made["secret_hint"] == f"…{made['secret'][-4:]}"
    assert made["events"] == ["alarm.closed", "job.failed"]  # in the documented order

    one = client.get(f"/v1/webhooks/{body['id']}", headers=admin)
    assert one.status_code == 200
    assert one.json() == {k: v for k, v in body.items() if k != "secret"}
    first = client.get("/v1/webhooks", params={"limit": 1}, headers=admin).json()
    assert [h["id"] for h in first["webhooks"]] == [body["id"]]
    assert first["next_cursor"]
    second = client.get(
        "/v1/webhooks", params={"limit": 1, "cursor": first["next_cursor"]}, headers=admin
    ).json()
    assert [h["id"] for h in second["webhooks"]] == [made["id"]]
    assert second["next_cursor"] is None
    for response in (one, client.get("/v1/webhooks", headers=admin)):
        assert SECRET not in response.text and made["secret"] not in response.text
        assert '"secret"' not in response.text

    assert client.delete(f"/v1/webhooks/{body['id']}", headers=admin).status_code == 204
    assert_problem(client.get(f"/v1/webhooks/{body['id']}", headers=admin), 404, "webhook")
    assert_problem(client.delete(f"/v1/webhooks/{body['id']}", headers=admin), 404)
    listed = client.get("/v1/webhooks", headers=admin).json()["webhooks"]
    assert [h["id"] for h in listed] == [made["id"]]


def test_bad_urls_and_events_get_422_naming_them(client: TestClient, admin: Headers) -> None:
    for url in (
        "ftp://example.com/x",
        "example.com/hook",
        "http://",
        "http://h:99999/",
        "",
        "http://[::1/",
        "http://exa mple.com/",
        "http://ex\x00ample.com/",
        "https://ops.example.com:port/",
    ):
        response = client.post("/v1/webhooks", json={**HOOK, "url": url}, headers=admin)
        assert_problem(response, 422, "url")
    response = client.post(
        "/v1/webhooks", json={**HOOK, "events": ["alarm.opened", "alarm.exploded"]}, headers=admin
    )
    problem = assert_problem(response, 422, "events.1", "'alarm.exploded'", "alarm.opened")
    assert problem["errors"][0]["loc"] == ["events", "1"]
    assert_problem(
        client.post("/v1/webhooks", json={**HOOK, "events": []}, headers=admin), 422, "events"
    )
    assert_problem(
        client.post(
            "/v1/webhooks", json={**HOOK, "events": ["job.failed", "job.failed"]}, headers=admin
        ),
        422,
        "twice",
    )
    assert_problem(
        client.post("/v1/webhooks", json={**HOOK, "secret": "short"}, headers=admin),
        422,
        "secret",
    )
    assert_problem(client.get("/v1/webhooks", params={"cursor": "nope"}, headers=admin), 422)
    assert client.get("/v1/webhooks", headers=admin).json()["webhooks"] == []


def test_managing_webhooks_needs_the_admin_scope(
    client: TestClient, make_headers: Callable[..., Headers]
) -> None:
    reader = make_headers("read", "label", "train")
    assert_problem(client.post("/v1/webhooks", json=HOOK, headers=reader), 403, "admin")
    assert_problem(client.get("/v1/webhooks", headers=reader), 403)
    assert_problem(client.get("/v1/webhooks/1/deliveries", headers=reader), 403)
    assert_problem(client.delete("/v1/webhooks/1", headers=reader), 403)
    assert_problem(client.get("/v1/webhooks"), 401)


def test_deliveries_list_every_attempt_and_the_metrics_count_them(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    fast = settings.model_copy(update={"webhook_backoff_seconds": 60.0})
    with receiver(script=[500]) as hook:
        hook_id = client.post("/v1/webhooks", json={**HOOK, "url": hook.url}, headers=admin).json()[
            "id"
        ]
        for number in range(3):
            with sessions() as session, session.begin():
                emit(session=session, event="alarm.opened", data={"alarm_id": number})
        backlog = _gauge(client, "vigil_webhook_outbox_backlog", event="alarm.opened")
        assert backlog == 3
        before = counter_value(
            client, "vigil_webhook_deliveries", event="alarm.opened", outcome="delivered"
        )
        assert Deliverer(fast, sessions=sessions, name="d1").run_once() == 3
        hook.wait_for(3)
    assert _gauge(client, "vigil_webhook_outbox_backlog", event="alarm.opened") == 1
    after = counter_value(
        client, "vigil_webhook_deliveries", event="alarm.opened", outcome="delivered"
    )
    assert after - before == 2
    page = client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=admin).json()
    listed = page["deliveries"]
    assert len(listed) == 3 and page["next_cursor"] is None
    assert [d["payload"]["data"]["alarm_id"] for d in listed] == [2, 1, 0]  # newest first
    assert sorted(d["status"] for d in listed) == ["delivered", "delivered", "pending"]
    (waiting,) = [d for d in listed if d["status"] == "pending"]
    assert waiting["attempts"] == 1
    assert waiting["last_status_code"] == 500
    assert waiting["last_error"] == "HTTP 500"
    assert waiting["next_attempt_at"] is not None and waiting["delivered_at"] is None
    assert waiting["history"][0]["status_code"] == 500
    assert waiting["history"][0]["worker"] == "d1"
    for done in (d for d in listed if d["status"] == "delivered"):
        assert done["next_attempt_at"] is None and done["delivered_at"] is not None
        assert done["last_status_code"] == 200
    pending = client.get(
        f"/v1/webhooks/{hook_id}/deliveries", params={"status": "pending"}, headers=admin
    ).json()["deliveries"]
    assert [d["id"] for d in pending] == [waiting["id"]]
    # Paging one at a time walks the same list.
    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        step = client.get(f"/v1/webhooks/{hook_id}/deliveries", params=params, headers=admin).json()
        seen += [d["id"] for d in step["deliveries"]]
        cursor = step["next_cursor"]
        if cursor is None:
            break
    assert seen == [d["id"] for d in listed]
    assert_problem(client.get("/v1/webhooks/999/deliveries", headers=admin), 404)
    # Deleting the webhook drops what was still pending.
    assert client.delete(f"/v1/webhooks/{hook_id}", headers=admin).status_code == 204
    assert _gauge(client, "vigil_webhook_outbox_backlog", event="alarm.opened") == 0


def test_activating_a_version_through_the_api_emits_model_activated(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    client.post(
        "/v1/webhooks",
        json={"url": closed_port_url(), "secret": SECRET, "events": ["model.activated"]},
        headers=admin,
    )
    series_id = create_series(sessions)
    with sessions() as session, session.begin():
        for number, status in ((1, MODEL_ACTIVE), (2, MODEL_CANDIDATE)):
            session.add(
                ModelVersion(
                    series_id=series_id,
                    version=number,
                    status=status,
                    artifact=b"unused",
                    sha256=hashlib.sha256(b"unused").hexdigest(),
                    metrics={},
                )
            )
    response = client.post(f"/v1/series/{series_id}/models/2/activate", headers=admin)
    assert response.status_code == 200, response.text
    # Activating the active version again changes nothing, and announces nothing.
    assert client.post(f"/v1/series/{series_id}/models/2/activate", headers=admin).is_success
    with sessions() as session:
        rows = session.scalars(select(WebhookDelivery)).all()
    assert [row.event for row in rows] == ["model.activated"]
    assert '"version":2' in rows[0].body
    assert f'"series_id":{series_id}' in rows[0].body


def _gauge(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exported")
