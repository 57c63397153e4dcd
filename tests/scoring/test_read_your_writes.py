"""Once a version is active, every later request in every API process scores with it: each
request's key lookup reads the activation generation, and the registry catches up first."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.main import create_app
from tests.utils.stream import windows_of
from tests.utils.trained import train_now, trained_series

Headers = dict[str, str]


def test_a_new_version_is_served_at_once_by_every_api_process(
    settings: Settings, sessions: sessionmaker[Session], make_headers: Callable[..., Headers]
) -> None:
    # Polling alone would take an hour: whatever these processes learn, they learn per request.
    settings = settings.model_copy(update={"model_poll_seconds": 3600.0})
    series_id, stream = trained_series(sessions, settings)
    windows = windows_of(stream, window_size=16, stride=8)[:2].tolist()
    headers = make_headers("score", "train", "read")

    def version(client: TestClient) -> int:
        response = client.post(
            "/v1/score", json={"series_id": series_id, "windows": windows}, headers=headers
        )
        assert response.status_code == 200, response.text
        return int(response.json()["model_version"])

    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        assert version(first) == version(second) == 1
        job_id = train_now(sessions, settings, series_id)  # a worker elsewhere
        job = first.get(f"/v1/jobs/{job_id}", headers=headers).json()
        assert job["status"] == "succeeded" and job["model_version"] == 2
        if not job["metrics"]["activated"]:  # the gate's call is not this test's subject
            promoted = first.post(f"/v1/series/{series_id}/models/2/activate", headers=headers)
            assert promoted.status_code == 200
        assert version(second) == 2
        assert version(first) == 2
        # A rollback through one process is what the other serves next, too.
        rolled = first.post(f"/v1/series/{series_id}/models/1/activate", headers=headers)
        assert rolled.status_code == 200, rolled.text
        assert version(second) == 1
        assert version(first) == 1
