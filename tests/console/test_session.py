"""Console sign-in and its session on the API, without a browser (SQLite and Postgres): the
cookie's flags, forgery, revocation, CSRF, scopes and series restrictions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.console.session import COOKIE
from app.security import create_key, revoke_key

Headers = dict[str, str]


def _key(sessions: sessionmaker[Session], *scopes: str, series: list[int] | None = None) -> str:
    with sessions() as session, session.begin():
        _, plain = create_key(session=session, name="console", scopes=scopes, series_ids=series)
    return plain


def _sign_in(client: TestClient, key: str) -> str:
    """Sign in; returns the page's CSRF token."""
    response = client.post("/console/login", data={"api_key": key}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/fleet"
    page = client.get("/console/fleet")
    assert page.status_code == 200
    marker = '<meta name="csrf-token" content="'
    return page.text.split(marker, 1)[1].split('"', 1)[0]


def _series(client: TestClient, admin: Headers, name: str) -> int:
    created = client.post(
        "/v1/series",
        json={"name": name, "channels": ["a"], "window_size": 4, "stride": 2},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    series_id: int = created.json()["id"]
    return series_id


def test_the_cookie_is_httponly_strict_and_holds_no_key(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    key = _key(sessions, "read")
    response = client.post("/console/login", data={"api_key": key}, follow_redirects=False)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert key not in cookie
    assert key.split("_", 1)[1][:20] not in cookie


def test_bad_keys_foreign_origins_and_forged_cookies_get_no_session(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    assert client.post("/console/login", data={"api_key": "vgl_nope"}).status_code == 401
    no_read = _key(sessions, "ingest")
    refused = client.post("/console/login", data={"api_key": no_read})
    assert refused.status_code == 401
    assert "lacks `read`" in refused.text
    key = _key(sessions, "read")
    foreign = client.post(
        "/console/login",
        data={"api_key": key},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert foreign.status_code != 303
    assert COOKIE not in client.cookies

    _sign_in(client, key)
    real = client.cookies[COOKIE]
    key_id, expires, nonce, mac = real.split(".")
    for forged in (
        f"{key_id}.{int(expires) + 3600}.{nonce}.{mac}",  # a later expiry
        f"{int(key_id) + 1}.{expires}.{nonce}.{mac}",  # another key
        f"{key_id}.{expires}.{nonce}.{'0' * 64}",
        "garbage",
    ):
        client.cookies.clear()
        client.cookies.set(COOKIE, forged)
        page = client.get("/console/fleet", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/console/login"
        assert client.get("/v1/series").status_code == 401


def test_revoking_the_key_ends_its_sessions(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    key = _key(sessions, "read")
    _sign_in(client, key)
    assert client.get("/v1/series").status_code == 200
    with sessions() as session, session.begin():
        revoke_key(session=session, key_id=1)
    assert client.get("/v1/series").status_code == 401
    assert client.get("/console/fleet", follow_redirects=False).status_code == 303


def test_api_writes_with_the_session_need_the_csrf_token_and_the_scope(
    client: TestClient, sessions: sessionmaker[Session], admin: Headers
) -> None:
    series_id = _series(client, admin, "pump")
    body = {"series_id": series_id, "start": 0, "end": 10, "label": "false_negative"}
    csrf = _sign_in(client, _key(sessions, "read", "label"))
    missing = client.post("/v1/labels", json=body)
    assert missing.status_code == 403
    assert "CSRF" in missing.json()["detail"]
    wrong = client.post("/v1/labels", json=body, headers={"X-CSRF-Token": "f" * 64})
    assert wrong.status_code == 403
    assert client.post("/v1/labels", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    # Another key's session: its token does not carry over, and a read key cannot write.
    client.cookies.clear()
    reader = _sign_in(client, _key(sessions, "read"))
    assert client.post("/v1/labels", json=body, headers={"X-CSRF-Token": csrf}).status_code == 403
    forged = client.post("/v1/labels", json=body, headers={"X-CSRF-Token": reader})
    assert forged.status_code == 403
    assert "'label' scope" in forged.json()["detail"]


@pytest.mark.parametrize("path", ["/console/api/series/{id}/chart", "/v1/series/{id}/points"])
def test_a_series_restricted_key_sees_only_its_series(
    client: TestClient, sessions: sessionmaker[Session], admin: Headers, path: str
) -> None:
    mine, other = _series(client, admin, "mine"), _series(client, admin, "other")
    _sign_in(client, _key(sessions, "read", series=[mine]))
    assert client.get(path.format(id=mine)).status_code == 200
    assert client.get(path.format(id=other)).status_code == 403
    fleet = client.get("/console/fleet").text
    assert "/console/series/1" in fleet
    assert "/console/series/2" not in fleet


def test_pages_send_a_strict_content_security_policy(
    client: TestClient, sessions: sessionmaker[Session], make_headers: Callable[..., Headers]
) -> None:
    _sign_in(client, _key(sessions, "read"))
    for path in ("/console/fleet", "/console/alarms", "/console/models", "/console/feedback"):
        page = client.get(path)
        assert page.status_code == 200, path
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self';" in policy
        assert "http" not in page.text.split("<main>", 1)[0].replace("http-equiv", "")


def test_the_chart_endpoint_decimates_on_both_backends(
    client: TestClient, sessions: sessionmaker[Session], admin: Headers
) -> None:
    series_id = _series(client, admin, "long")
    n = 5000
    values = [[float(i % 97)] for i in range(n)]
    values[1234] = [1e6]  # a spike the decimation must keep
    sent = client.post(
        f"/v1/series/{series_id}/points",
        json={"timestamps": [1_767_225_600 + i for i in range(n)], "values": values},
        headers=admin,
    )
    assert sent.status_code == 200, sent.text
    _sign_in(client, _key(sessions, "read"))
    chart = client.get(f"/console/api/series/{series_id}/chart?width=100").json()
    assert chart["points"] == n
    channel = chart["channels"][0]
    assert 100 <= len(channel["t"]) <= 200
    assert max(channel["v"]) == 1e6
    assert min(channel["v"]) == 0.0
    part = client.get(
        f"/console/api/series/{series_id}/chart",
        params={"start": "2026-01-01T00:10:00Z", "end": 1_767_225_600 + 700, "width": 1000},
    ).json()
    assert part["points"] == 101  # every point of a short range, none decimated away
    assert len(part["channels"][0]["t"]) == 101
    bad = client.get(f"/console/api/series/{series_id}/chart?start=10&end=5")
    assert bad.status_code == 422
    assert "end" in bad.text
