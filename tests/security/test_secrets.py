"""No secret appears in logs or error bodies: API keys (bearer and bootstrap) and the database
password, with every logger at DEBUG and SQLAlchemy's statement log (with parameters) on too.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.main import create_app
from app.security import create_key, revoke_key
from tests.utils.api_helpers import Headers, create_series

BOOTSTRAP_KEY = "boot-" + secrets.token_urlsafe(30)
PASSWORD = "Pa55-" + secrets.token_hex(8)


def _leaks(text: str, secret: str) -> bool:
    # NOTE: app/security.py keeps a key's first 12 characters as its `prefix`, shown by
    # `vigil keys list`; everything after them must never be written anywhere.
    return secret in text or secret[12:] in text


def _assert_clean(response: Any, *secrets_: str) -> None:
    where = f"{response.request.method} {response.request.url} -> {response.status_code}"
    shown = response.text + " " + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in secrets_:
        assert not _leaks(shown, secret), f"{where} shows a secret: {shown[:300]}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy keeps its own loggers at WARNING; an operator may turn statements on.
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    yield caplog


def _all_logged(caplog: pytest.LogCaptureFixture) -> str:
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in records)


@pytest.fixture
def bootstrapped(settings: Settings, debug_logs: pytest.LogCaptureFixture) -> Iterator[TestClient]:
    config = settings.model_copy(
        update={"bootstrap_admin_key": BOOTSTRAP_KEY, "max_body_bytes": 4096}
    )
    with TestClient(create_app(config)) as client:
        yield client


def test_keys_appear_in_no_log_line_or_response(
    bootstrapped: TestClient,
    debug_logs: pytest.LogCaptureFixture,
    make_headers: Callable[..., Headers],
    sessions: sessionmaker[Session],
) -> None:
    client = bootstrapped
    boot = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    reader = make_headers("read")
    reader_key = reader["Authorization"].removeprefix("Bearer ")
    with sessions() as session, session.begin():
        revoked, revoked_key = create_key(session=session, name="gone", scopes=["admin"])
        revoke_key(session=session, key_id=revoked.id)
    near_miss = BOOTSTRAP_KEY[:-1] + ("A" if BOOTSTRAP_KEY[-1] != "A" else "B")
    series = create_series(client, boot)
    sid = series["id"]
    responses = [
        client.get("/v1/series", headers=boot),  # 200
        client.get("/v1/series", headers=reader),  # 200
        client.post("/v1/series", json={}, headers=reader),  # 403
        client.get("/v1/series", headers={"Authorization": f"Bearer {near_miss}"}),  # 401
        client.get("/v1/series", headers={"Authorization": f"Bearer {revoked_key}"}),  # 401
        client.get("/v1/series", headers={"Authorization": f"Basic {BOOTSTRAP_KEY}"}),  # 401
        client.get("/v1/series", headers={"Authorization": f"Bearer {BOOTSTRAP_KEY} x"}),  # 401
        client.post("/v1/labels", json={"series_id": sid, "label": "idle"}, headers=boot),  # 422
        client.post(
            "/v1/labels",
            json={"series_id": sid, "start": 0, "end": 1, "label": "nope"},
            headers={**boot, "Idempotency-Key": "label-1"},
        ),  # 422: not a class (remembered for the idempotency key, under the key's digest)
        client.get("/v1/series/999", headers=boot),  # 404
        client.put("/v1/series", headers=boot),  # 405
        client.post("/v1/series", content=b"x" * 5000, headers=boot),  # 413
        client.post("/v1/series", content=b"{}", headers={**boot, "Content-Type": "text/plain"}),
        client.post(
            f"/v1/series/{sid}/points",
            content="timestamp,flow\n1,2\n",
            headers={**boot, "Content-Type": "text/csv"},
        ),  # 422
        client.post(
            "/v1/score", json={"series_id": sid, "windows": [[[0.0] * 3] * 8]}, headers=boot
        ),
        client.get("/readyz"),
        client.get("/metrics"),
    ]
    statuses = [r.status_code for r in responses]
    expected = [200, 200, 403, 401, 401, 401, 401, 422, 422, 404, 405, 413, 415, 422, 409, 200, 200]
    assert statuses == expected
    for response in responses:
        _assert_clean(response, BOOTSTRAP_KEY, reader_key, revoked_key, near_miss)
    logged = _all_logged(debug_logs)
    assert "sqlalchemy.engine" in logged, "statements are not logged: the test would see nothing"
    assert "created the bootstrap admin key" in logged
    for secret in (BOOTSTRAP_KEY, reader_key, revoked_key, near_miss):
        lines = [line for line in logged.splitlines() if _leaks(line, secret)]
        assert lines == [], f"{secret[:8]}… is logged"


def test_error_bodies_never_echo_the_authorization_header(
    client: TestClient, admin: Headers
) -> None:
    key = admin["Authorization"].removeprefix("Bearer ")
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/series?limit=0", {}),
        ("POST", "/v1/series", {"json": {"name": "x y"}}),
        ("PATCH", "/v1/series/1", {"json": {"name": "x"}}),
        ("POST", "/v1/labels", {"json": {"score_id": "nope", "label": "x"}}),
        ("POST", "/v1/score", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        ("GET", "/v1/jobs/0", {}),
        ("DELETE", "/v1/series", {}),
    ]
    for method, path, kwargs in requests:
        headers = {**admin, **kwargs.pop("headers", {})}
        response = client.request(method, path, headers=headers, **kwargs)
        assert 400 <= response.status_code < 500, response.text
        _assert_clean(response, key)
        assert "authorization" not in response.text.lower()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # only for `settings`
def test_a_database_password_appears_in_no_response_or_log(
    settings: Settings, debug_logs: pytest.LogCaptureFixture
) -> None:
    # Port 1 on loopback refuses at once: the database is "down" from the first request.
    url = f"postgresql+psycopg://vigil:{PASSWORD}@127.0.0.1:1/vigil"
    config = settings.model_copy(update={"database_url": url, "bootstrap_admin_key": BOOTSTRAP_KEY})
    with TestClient(create_app(config)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        down = client.get("/v1/series", headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})
        assert down.status_code == 503
        assert down.headers["retry-after"]
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
    for response in (ready, down, metrics):
        _assert_clean(response, PASSWORD, BOOTSTRAP_KEY)
    logged = _all_logged(debug_logs)
    assert PASSWORD not in logged
    assert "OperationalError" in logged
