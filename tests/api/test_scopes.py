"""Every route against every scope, found by introspecting the app: new routes join by themselves.

A route's scope is the `require_<scope>` dependency in its dependency tree (app/api/deps.py).
Missing, malformed, unknown and revoked keys get 401; a key without the scope gets 403; a key
with the scope, or an admin key, gets past authorisation (the request may still be a 404 or 422,
since the matrix calls routes with placeholder ids and empty bodies).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import Alarm, ApiKey
from app.security import SCOPES, create_key, revoke_key

Headers = dict[str, str]

PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics"}
"""The only routes that take no key (issue 3)."""

REQUIRE_PREFIX = "require_"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    scopes: frozenset[str]
    dependant: Dependant

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def url(self) -> str:
        url = self.path
        for param in self.dependant.path_params:
            url = url.replace("{" + param.name + "}", _placeholder(param.field_info.annotation))
        return url


def _placeholder(annotation: Any) -> str:
    if annotation is uuid.UUID:
        return str(uuid.UUID(int=1))
    return "1"  # ints, and strings that look like ids


def _required_scopes(dependant: Dependant) -> frozenset[str]:
    scopes: set[str] = set()
    pending = list(dependant.dependencies)
    while pending:
        dependency = pending.pop()
        name = getattr(dependency.call, "__name__", "")
        if name.startswith(REQUIRE_PREFIX):
            scopes.add(name.removeprefix(REQUIRE_PREFIX))
        pending.extend(dependency.dependencies)
    return frozenset(scopes)


def endpoints(app: FastAPI) -> Iterator[Endpoint]:
    """Every method of every API route, however deeply its router is included."""
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.original_route, APIRoute):
            continue  # /docs, /openapi.json and the like
        if str(context.path).startswith("/console"):
            continue  # the console's pages: session cookie, not bearer keys (tests/console)
        dependant = context.dependant
        assert isinstance(dependant, Dependant)
        for method in sorted(context.methods or ()):
            yield Endpoint(method, str(context.path), _required_scopes(dependant), dependant)


def call(client: TestClient, endpoint: Endpoint, headers: Headers) -> Any:
    body = {} if endpoint.method in {"POST", "PUT", "PATCH"} else None
    return client.request(endpoint.method, endpoint.url(), headers=headers, json=body)


def test_the_enumeration_sees_the_routers(client: TestClient) -> None:
    """Guards against the matrix going vacuous when route plumbing changes upstream."""
    found = {str(e) for e in endpoints(client.app)}  # type: ignore[arg-type]
    expected = {
        "POST /v1/series",
        "GET /v1/series",
        "GET /v1/series/{series_id}",
        "PATCH /v1/series/{series_id}",
        "POST /v1/series/{series_id}/points",
        "GET /v1/series/{series_id}/points",
        "POST /v1/labels",
        "GET /v1/labels",
        "GET /v1/labels/{label_id}",
        "DELETE /v1/labels/{label_id}",
        "GET /healthz",
    }
    assert expected <= found


def test_every_route_but_the_probes_requires_a_scope(client: TestClient) -> None:
    unprotected = [
        str(e)
        for e in endpoints(client.app)
        if not e.scopes  # type: ignore[arg-type]
    ]
    assert sorted(unprotected) == sorted(f"GET {path}" for path in PUBLIC_PATHS)
    for endpoint in endpoints(client.app):  # type: ignore[arg-type]
        assert endpoint.scopes <= set(SCOPES), f"{endpoint} requires unknown scopes"
        if endpoint.path.startswith("/v1"):
            assert endpoint.scopes, f"{endpoint} takes no API key"


def test_scope_matrix(
    client: TestClient,
    make_headers: Callable[..., Headers],
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, session.begin():
        revoked, plain = create_key(session=session, name="revoked", scopes=["admin"])
        revoke_key(session=session, key_id=revoked.id)
        _, expired = create_key(
            session=session,
            name="expired",
            scopes=["admin"],
            expires_at=utcnow() - timedelta(seconds=1),
        )
    unauthenticated: dict[str, Headers] = {
        "no key": {},
        "unknown key": {"Authorization": "Bearer vgl_not-a-real-key"},
        "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty bearer": {"Authorization": "Bearer "},
        "revoked admin key": {"Authorization": f"Bearer {plain}"},
        "expired admin key": {"Authorization": f"Bearer {expired}"},
    }
    keys = {scope: make_headers(scope, name=f"{scope}-key") for scope in SCOPES}
    failures: list[str] = []
    checked = 0
    for endpoint in endpoints(client.app):  # type: ignore[arg-type]
        if not endpoint.scopes:
            continue
        for who, headers in unauthenticated.items():
            response = call(client, endpoint, headers)
            checked += 1
            if response.status_code != 401:
                failures.append(f"{endpoint} with {who}: {response.status_code}, expected 401")
            elif response.headers.get("www-authenticate") != "Bearer":
                failures.append(f"{endpoint} with {who}: 401 without WWW-Authenticate: Bearer")
        for scope, headers in keys.items():
            response = call(client, endpoint, headers)
            checked += 1
            allowed = scope == "admin" or endpoint.scopes == {scope}
            if allowed and response.status_code in (401, 403):
                failures.append(f"{endpoint} with scope {scope}: {response.status_code}")
            elif allowed and response.status_code >= 500:
                failures.append(f"{endpoint} with scope {scope}: {response.status_code} (5xx)")
            elif not allowed and response.status_code != 403:
                failures.append(
                    f"{endpoint} with scope {scope}: {response.status_code}, expected 403 "
                    f"(needs {', '.join(sorted(endpoint.scopes))})"
                )
            elif not allowed and response.headers["content-type"] != "application/problem+json":
                failures.append(f"{endpoint} with scope {scope}: 403 is not problem+json")
    assert checked > 0
    assert failures == []


def test_detection_settings_need_the_train_scope(
    client: TestClient, make_headers: Callable[..., Headers], admin: Headers
) -> None:
    """An ingest-only key (a gateway feeding points) cannot silence a series by moving its
    threshold (issue 12, item 8)."""
    created = client.post(
        "/v1/series",
        json={"name": "pump", "channels": ["a"], "window_size": 4, "stride": 2},
        headers=make_headers("ingest"),
    )
    assert created.status_code == 201
    path = f"/v1/series/{created.json()['id']}"
    refused = client.patch(path, json={"threshold_quantile": 0.5}, headers=make_headers("ingest"))
    assert refused.status_code == 403
    assert "'train' scope" in refused.json()["detail"]
    assert client.get(path, headers=admin).json()["threshold_quantile"] == 0.99
    allowed = client.patch(path, json={"threshold_quantile": 0.5}, headers=make_headers("train"))
    assert allowed.status_code == 200
    assert allowed.json()["threshold_quantile"] == 0.5


def test_a_key_stops_working_when_it_expires(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session, session.begin():
        record, plain = create_key(
            session=session,
            name="temporary",
            scopes=["read"],
            expires_at=utcnow() + timedelta(hours=1),
        )
    headers = {"Authorization": f"Bearer {plain}"}
    assert client.get("/v1/series", headers=headers).status_code == 200
    with sessions() as session, session.begin():
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == record.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    expired = client.get("/v1/series", headers=headers)
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


BODIES: dict[str, Any] = {
    "POST /v1/series": {"name": "new", "channels": ["a"], "window_size": 4, "stride": 2},
    "PATCH /v1/series/{series_id}": {"threshold_quantile": 0.5},
    "POST /v1/series/{series_id}/points": {"timestamps": [1767225900], "values": [[1.0]]},
    "POST /v1/labels": {"series_id": 1, "start": 1767225600, "end": 1767225700, "label": "idle"},
    "POST /v1/score": {"series_id": 1, "windows": [[[1.0]] * 4]},
    "POST /v1/alarms/{alarm_id}/verdict": {"label": "false_positive"},
}
"""Bodies that name series 1, for the routes that read one (the others get `{}`)."""

LISTS = {"GET /v1/series", "GET /v1/labels", "GET /v1/jobs", "GET /v1/alarms"}
"""Routes that answer a restricted key with only its own series' items."""


def _seed_series_one(client: TestClient, admin: Headers) -> dict[str, Any]:
    """Series 1 with a label (1) and a job (1), the ids the matrix's placeholders name."""
    series = client.post(
        "/v1/series",
        json={
            "name": "one",
            "channels": ["a"],
            "window_size": 4,
            "stride": 2,
            "classes": {"idle": "normal"},
        },
        headers=admin,
    ).json()
    assert series["id"] == 1
    label = client.post("/v1/labels", json=BODIES["POST /v1/labels"], headers=admin)
    assert label.status_code == 201 and label.json()["id"] == 1
    ingested = client.post(
        "/v1/series/1/points",
        json={"timestamps": [1_767_225_600 + i for i in range(12)], "values": [[0.0]] * 12},
        headers=admin,
    )
    assert ingested.status_code == 200, ingested.text
    job = client.post("/v1/series/1/train", headers=admin)
    assert job.status_code == 202 and job.json()["id"] == 1
    return {
        "series": client.get("/v1/series/1", headers=admin).json(),
        "labels": client.get("/v1/labels", headers=admin).json(),
        "points": client.get("/v1/series/1/points", headers=admin).json(),
    }


def test_series_restriction_matrix(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    """A key restricted to some series cannot read, change or score any other, on any route
    (placeholder ids all point at series 1, its label and its job); one restricted to series 1
    gets past the restriction everywhere but where an operation concerns every series (series
    creation, webhooks, the audit log)."""
    before = _seed_series_one(client, admin)
    with sessions() as session, session.begin():  # alarm 1, of series 1 (detection on ingest)
        session.add(
            Alarm(
                series_id=1,
                kind="model",
                status="open",
                first_seq=0,
                last_seq=0,
                start_ts=1_767_225_600_000_000,
                end_ts=1_767_225_603_000_000,
                windows=1,
                peak_score=5.0,
                threshold=1.0,
                model_version=1,
                channels=[],
                opened_at=utcnow(),
            )
        )
    own = client.post(
        "/v1/series",
        json={"name": "two", "channels": ["a"], "window_size": 4, "stride": 2},
        headers=admin,
    ).json()
    with sessions() as session, session.begin():
        _, elsewhere = create_key(
            session=session, name="elsewhere", scopes=["admin"], series_ids=[own["id"]]
        )
        _, here = create_key(session=session, name="here", scopes=["admin"], series_ids=[1])
    failures: list[str] = []
    guarded = [e for e in endpoints(client.app) if e.scopes]  # type: ignore[arg-type]

    def call_as(key: str, endpoint: Endpoint) -> Any:
        body = BODIES.get(str(endpoint), {} if endpoint.method in {"POST", "PATCH"} else None)
        headers = {"Authorization": f"Bearer {key}"}
        return client.request(endpoint.method, endpoint.url(), headers=headers, json=body)

    for endpoint in guarded:
        response = call_as(elsewhere, endpoint)
        if str(endpoint) in LISTS:
            shown = str(response.json())
            if response.status_code != 200 or "'one'" in shown or "'series_id': 1," in shown:
                failures.append(f"{endpoint} listed series 1 to a key restricted elsewhere")
        elif response.status_code != 403:
            failures.append(f"{endpoint} restricted elsewhere: {response.status_code}, not 403")
    binary = client.post(
        "/v1/score",
        content=b"\0" * 16,
        headers={
            "Authorization": f"Bearer {elsewhere}",
            "Content-Type": "application/octet-stream",
            "X-Vigil-Series-Id": "1",
            "X-Vigil-Shape": "1,4,1",
        },
    )
    if binary.status_code != 403:
        failures.append(f"binary POST /v1/score restricted elsewhere: {binary.status_code}")
    assert failures == []
    # Nothing the refused key sent changed series 1.
    assert client.get("/v1/series/1", headers=admin).json() == before["series"]
    assert client.get("/v1/labels", headers=admin).json() == before["labels"]
    assert client.get("/v1/series/1/points", headers=admin).json() == before["points"]

    for endpoint in guarded:
        response = call_as(here, endpoint)
        refused = response.status_code == 403
        if refused != _for_every_series(str(endpoint)) or response.status_code >= 500:
            failures.append(f"{endpoint} restricted to series 1: {response.status_code}")
    assert failures == []


def _for_every_series(endpoint: str) -> bool:
    """Operations no series-restricted key may perform, whichever series it may use."""
    method, path = endpoint.split(" ", 1)
    return (
        (method, path) == ("POST", "/v1/series")
        or path.startswith("/v1/webhooks")
        or path.startswith("/v1/audit")
    )
