"""POST /v1/series/{id}/train refuses at once a series too short to train on."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job
from app.main import create_app
from app.training.pipeline import cut_windows
from tests.utils.api_helpers import assert_problem
from tests.utils.stream import create_series, insert_points, make_stream

Headers = dict[str, str]


@pytest.fixture
def tour_client(settings: Settings) -> Iterator[TestClient]:
    """The default minimum of 8 windows, as the README's tour meets it."""
    with TestClient(create_app(settings.model_copy(update={"min_train_windows": 8}))) as client:
        yield client


def jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_the_tours_series_needs_576_points(
    tour_client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions, window_size=128, stride=64)
    path = f"/v1/series/{series_id}/train"
    empty = tour_client.post(path, headers=admin)
    assert_problem(
        empty, 422, "has 0 stored points, 0 windows of 128 points every 64", "576 points"
    )
    assert empty.json()["title"] == "Not enough data"

    insert_points(sessions, series_id, make_stream(575))
    short = tour_client.post(path, headers=admin)
    assert_problem(
        short,
        422,
        "has 575 stored points, 7 windows",
        "needs at least 8 windows, that is 576 points: ingest 1 more",
    )
    assert jobs(sessions) == 0

    stream = make_stream(576)
    stream.ts, stream.values = stream.ts[575:], stream.values[575:]
    insert_points(sessions, series_id, stream)
    queued = tour_client.post(path, headers=admin)
    assert queued.status_code == 202, queued.text
    assert jobs(sessions) == 1
    assert tour_client.post(path, headers=admin).status_code == 200  # the open job


def test_the_count_follows_the_trainers_windowing(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """With the tests' minimum of 4 windows of 16 every 8: 40 points."""
    series_id = create_series(sessions, window_size=16, stride=8)
    insert_points(sessions, series_id, make_stream(39))
    ts = np.arange(39, dtype=np.int64)
    assert len(cut_windows(ts, window_size=16, stride=8, max_gap_us=None)) == (
        settings.min_train_windows - 1
    )
    assert_problem(client.post(f"/v1/series/{series_id}/train", headers=admin), 422, "3 windows")
    stream = make_stream(40)
    stream.ts, stream.values = stream.ts[39:], stream.values[39:]
    insert_points(sessions, series_id, stream)
    assert client.post(f"/v1/series/{series_id}/train", headers=admin).status_code == 202
