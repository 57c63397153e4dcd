"""Retrains armed by labels: one job per batch of verdicts, started after a quiet period,
that includes every label posted before it starts; what the label answers say of it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job
from app.main import create_app
from app.training.worker import Worker
from tests.utils.stream import Stream
from tests.utils.trained import trained_series

Headers = dict[str, str]


def _label(client: TestClient, headers: Headers, series_id: int, stream: Stream, i: int) -> Any:
    """false_positive on the i-th 20-point stretch of the stream."""
    response = client.post(
        "/v1/labels",
        json={
            "series_id": series_id,
            "start": float(stream.ts[20 * i]) / 1e6,
            "end": float(stream.ts[20 * i + 19]) / 1e6,
            "label": "false_positive",
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


def _jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_a_batch_of_labels_trains_one_version_after_a_quiet_period(
    settings: Settings, sessions: sessionmaker[Session], make_headers: Callable[..., Headers]
) -> None:
    settings = settings.model_copy(
        update={"retrain_after_labels": 3, "retrain_quiet_seconds": 3600.0}
    )
    series_id, stream = trained_series(sessions, settings)
    worker = Worker(settings, sessions=sessions)
    headers = make_headers("label", "train", "read")
    with TestClient(create_app(settings)) as client:
        assert _label(client, headers, series_id, stream, 0)["retrain"] is None
        assert _label(client, headers, series_id, stream, 1)["retrain"] is None
        assert _jobs(sessions) == 1  # the first training only
        armed = _label(client, headers, series_id, stream, 2)["retrain"]
        assert armed is not None and armed["status"] == "queued"
        first_due = datetime.fromisoformat(armed["not_before"])
        # More verdicts join the same job and move its start on: nothing starts mid-batch.
        for i in range(3, 6):
            joined = _label(client, headers, series_id, stream, i)["retrain"]
            assert joined["job_id"] == armed["job_id"]
            assert datetime.fromisoformat(joined["not_before"]) >= first_due
        assert worker.run_once() is None  # still quiet time: not due
        listed = client.get(f"/v1/jobs?series_id={series_id}&status=queued", headers=headers)
        assert [job["id"] for job in listed.json()["jobs"]] == [armed["job_id"]]
        # Asking for a retrain by hand makes the armed one due now, and returns it.
        manual = client.post(f"/v1/series/{series_id}/train", headers=headers)
        assert manual.status_code == 200
        assert manual.json()["id"] == armed["job_id"] and manual.json()["not_before"] is None
        assert worker.run_once() == armed["job_id"]
        job = client.get(f"/v1/jobs/{armed['job_id']}", headers=headers).json()
        assert job["status"] == "succeeded"
        # Every label posted before it started reached training: six stretches of 20 points.
        assert job["metrics"]["labelled_windows"] >= 6 * 2
        label = client.get("/v1/labels?series_id=" + str(series_id), headers=headers).json()[
            "labels"
        ][-1]
        assert label["retrain"]["status"] == "succeeded"
        assert label["retrain"]["activated"] is job["metrics"]["activated"]
        assert label["retrain"]["model_version"] == job["model_version"]


def test_labels_that_arrive_during_a_retrain_queue_the_next_one(
    settings: Settings, sessions: sessionmaker[Session], make_headers: Callable[..., Headers]
) -> None:
    settings = settings.model_copy(update={"retrain_after_labels": 1, "retrain_quiet_seconds": 0})
    series_id, stream = trained_series(sessions, settings)
    worker = Worker(settings, sessions=sessions)
    headers = make_headers("label", "read")
    with TestClient(create_app(settings)) as client:
        armed = _label(client, headers, series_id, stream, 0)["retrain"]
        claimed = worker.claim()
        assert claimed is not None and claimed.job_id == armed["job_id"]
        # A verdict while the job trains cannot join it: the answer says no retrain holds it.
        assert _label(client, headers, series_id, stream, 1)["retrain"] is None
        worker.execute(claimed)
        follow_up = client.get(f"/v1/jobs?series_id={series_id}", headers=headers).json()["jobs"][0]
        assert follow_up["id"] != armed["job_id"]
        assert follow_up["status"] == "queued" and follow_up["reason"] == "labels"
        assert worker.run_once() == follow_up["id"]
        # Nothing more arrived: no further retrain.
        assert worker.run_once() is None
