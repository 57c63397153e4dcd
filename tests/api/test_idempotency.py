"""Idempotency-Key on POST /v1/series/{id}/train (the labels route is covered in test_labels)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import IdempotencyRecord, Job
from tests.utils.stream import create_series, insert_points, make_stream

Headers = dict[str, str]


def trainable_series(sessions: sessionmaker[Session], name: str = "pump-1") -> int:
    """A series with enough points to train on (fewer get 422 before any job is queued)."""
    series_id = create_series(sessions, name=name)
    insert_points(sessions, series_id, make_stream(64))
    return series_id


def test_a_repeat_returns_the_first_response(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = trainable_series(sessions)
    headers = {**admin, "Idempotency-Key": "train-1"}
    first = client.post(f"/v1/series/{series_id}/train", headers=headers)
    assert first.status_code == 202
    again = client.post(f"/v1/series/{series_id}/train", headers=headers)
    # Without the key the second call would say 200 (job already queued); with it, the
    # first response comes back verbatim.
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_the_same_key_with_another_request_is_422(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    a = trainable_series(sessions, "a")
    b = trainable_series(sessions, "b")
    headers = {**admin, "Idempotency-Key": "k"}
    assert client.post(f"/v1/series/{a}/train", headers=headers).status_code == 202
    response = client.post(f"/v1/series/{b}/train", headers=headers)
    assert response.status_code == 422
    assert "different request" in response.json()["detail"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_repeat_while_the_first_is_in_flight_is_409(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = trainable_series(sessions)
    path = f"/v1/series/{series_id}/train"
    fingerprint = hashlib.sha256(b"\0".join([b"POST", path.encode(), b""])).hexdigest()
    principal = hashlib.sha256(admin["Authorization"].encode()).hexdigest()
    with sessions() as session, session.begin():
        session.add(IdempotencyRecord(principal=principal, key="busy", request_hash=fingerprint))
    response = client.post(path, headers={**admin, "Idempotency-Key": "busy"})
    assert response.status_code == 409
    assert response.headers["retry-after"] == "1"


def test_keys_are_scoped_to_the_api_key(
    client: TestClient, make_headers: Callable[..., Headers], sessions: sessionmaker[Session]
) -> None:
    series_id = trainable_series(sessions)
    first = client.post(
        f"/v1/series/{series_id}/train", headers={**make_headers("train"), "Idempotency-Key": "x"}
    )
    second = client.post(
        f"/v1/series/{series_id}/train", headers={**make_headers("train"), "Idempotency-Key": "x"}
    )
    assert first.status_code == 202
    assert second.status_code == 200  # a different caller: its own request, not a replay
    assert "idempotent-replayed" not in second.headers


def test_unauthorised_attempts_are_not_remembered(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = trainable_series(sessions)
    denied = client.post(
        f"/v1/series/{series_id}/train",
        headers={"Authorization": "Bearer wrong", "Idempotency-Key": "z"},
    )
    assert denied.status_code == 401
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
