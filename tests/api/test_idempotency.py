"""Idempotency-Key on POST /v1/series/{id}/train (the labels route is covered in test_labels)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.api.routes import jobs as jobs_routes
from app.config import Settings
from app.db.base import utcnow
from app.db.models import IdempotencyRecord, Job
from app.main import create_app
from app.security import create_key, revoke_key
from app.training import jobs as jobs_service
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


def _pending(
    sessions: sessionmaker[Session],
    headers: Headers,
    path: str,
    key: str,
    *,
    lease: timedelta,
    committed: bool = False,
) -> None:
    """A key held by a request to `path` whose lease ends `lease` from now (negative: lapsed)."""
    fingerprint = hashlib.sha256(b"\0".join([b"POST", path.encode(), b""])).hexdigest()
    principal = hashlib.sha256(headers["Authorization"].encode()).hexdigest()
    with sessions() as session, session.begin():
        session.add(
            IdempotencyRecord(
                principal=principal,
                key=key,
                request_hash=fingerprint,
                lease_owner="someone-else",
                lease_expires_at=utcnow() + lease,
                committed_at=utcnow() if committed else None,
            )
        )


def _jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_a_repeat_while_the_first_is_in_flight_is_409(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = trainable_series(sessions)
    path = f"/v1/series/{series_id}/train"
    _pending(sessions, admin, path, "busy", lease=timedelta(seconds=30))
    response = client.post(path, headers={**admin, "Idempotency-Key": "busy"})
    assert response.status_code == 409
    assert response.headers["retry-after"] == "1"
    assert _jobs(sessions) == 0


def test_a_key_whose_request_died_is_free_once_its_lease_lapses(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    """The process that held the key was killed before it did anything (issue 12, item 1):
    a retry performs the operation, once."""
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(100))
    path = f"/v1/series/{series_id}/train"
    _pending(sessions, admin, path, "orphan", lease=-timedelta(seconds=1))
    headers = {**admin, "Idempotency-Key": "orphan"}
    retried = client.post(path, headers=headers)
    assert retried.status_code == 202, retried.text
    again = client.post(path, headers=headers)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == retried.json()
    assert _jobs(sessions) == 1


def test_a_committed_operation_is_not_performed_again_when_its_response_was_lost(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    """Killed between the operation's commit and the recording of its response."""
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(100))
    path = f"/v1/series/{series_id}/train"
    _pending(sessions, admin, path, "lost", lease=-timedelta(seconds=1), committed=True)
    response = client.post(path, headers={**admin, "Idempotency-Key": "lost"})
    assert response.status_code == 409
    assert "not performed again" in response.json()["detail"]
    assert _jobs(sessions) == 0


def test_the_operation_commits_with_its_key_marked(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(100))
    response = client.post(
        f"/v1/series/{series_id}/train", headers={**admin, "Idempotency-Key": "marked"}
    )
    assert response.status_code == 202
    with sessions() as session:
        record = session.scalars(select(IdempotencyRecord)).one()
    assert record.committed_at is not None
    assert record.status_code == 202
    assert record.lease_owner is None


def test_a_request_that_lost_its_key_to_a_retry_changes_nothing(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request that outlived its lease (a stalled process) must not commit after a retry
    took its key over: the retry is the one that performs the operation."""
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(100))
    original = jobs_service.queue_manual_training

    def stalled(*, session: Session, series_id: int, settings: Settings) -> Any:
        with sessions() as other, other.begin():  # meanwhile, a retry takes the key over
            other.execute(update(IdempotencyRecord).values(lease_owner="the-retry"))
        return original(session=session, series_id=series_id, settings=settings)

    monkeypatch.setattr(jobs_routes, "queue_manual_training", stalled)
    response = client.post(
        f"/v1/series/{series_id}/train", headers={**admin, "Idempotency-Key": "stalled"}
    )
    assert response.status_code == 409
    assert "lost its Idempotency-Key" in response.json()["detail"]
    assert _jobs(sessions) == 0


def test_a_revoked_key_gets_no_replay(client: TestClient, sessions: sessionmaker[Session]) -> None:
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(100))
    with sessions() as session, session.begin():
        record, plain = create_key(session=session, name="soon-revoked", scopes=["train"])
    headers = {"Authorization": f"Bearer {plain}", "Idempotency-Key": "r"}
    assert client.post(f"/v1/series/{series_id}/train", headers=headers).status_code == 202
    with sessions() as session, session.begin():
        revoke_key(session=session, key_id=record.id)
    replay = client.post(f"/v1/series/{series_id}/train", headers=headers)
    assert replay.status_code == 401, replay.text
    assert "idempotent-replayed" not in replay.headers


def test_replays_count_against_the_rate_limit(
    settings: Settings, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(100))
    headers = {**admin, "Idempotency-Key": "counted"}
    limited = settings.model_copy(update={"rate_limit_per_minute": 2})
    with TestClient(create_app(limited)) as client:
        path = f"/v1/series/{series_id}/train"
        assert client.post(path, headers=headers).status_code == 202
        assert client.post(path, headers=headers).status_code == 202  # a replay, counted
        refused = client.post(path, headers=headers)
    assert refused.status_code == 429
    assert "idempotent-replayed" not in refused.headers


def test_the_key_length_is_the_header_as_sent(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    """openapi.json says 1 to 255 characters; quotes are characters too."""
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(100))
    path = f"/v1/series/{series_id}/train"
    longest = client.post(path, headers={**admin, "Idempotency-Key": "k" * 255})
    assert longest.status_code == 202
    quoted = client.post(path, headers={**admin, "Idempotency-Key": '"' + "q" * 255 + '"'})
    assert quoted.status_code == 400
    assert "1 to 255 characters" in quoted.json()["detail"]


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
