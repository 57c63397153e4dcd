"""A trained series and an API client whose detector scores what the tests ingest."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Alarm, WindowScore
from app.main import create_app
from tests.utils.stream import Stream, make_stream
from tests.utils.trained import trained_series

Headers = dict[str, str]
TRAINED = 400  # points the model is trained on; the tests ingest the stream's later points


@dataclass
class Setup:
    client: TestClient
    sessions: sessionmaker[Session]
    settings: Settings
    series_id: int
    headers: Headers


def send(
    client: TestClient, headers: Headers, series_id: int, ts: np.ndarray, values: np.ndarray
) -> Any:
    response = client.post(
        f"/v1/series/{series_id}/points",
        json={"timestamps": (ts / 1e6).tolist(), "values": values.tolist()},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


def add_closed_alarms(
    sessions: sessionmaker[Session], series_id: int, n: int, *, stuck_every: int = 0
) -> None:
    """n closed alarms a second apart (alarm i at 2026-01-01T00:00:0i), peak 2 + i, top channel
    c1 (0.7) then c0; with `stuck_every`, every such one is a data-quality `stuck` alarm."""
    with sessions() as session, session.begin():
        for i in range(n):
            stuck = bool(stuck_every) and i % stuck_every == 0
            session.add(
                Alarm(
                    series_id=series_id,
                    kind="data_quality" if stuck else "model",
                    check="stuck" if stuck else None,
                    status="closed",
                    first_seq=10 * i,
                    last_seq=10 * i + 1,
                    start_ts=1_767_225_600_000_000 + i * 10**6,
                    end_ts=1_767_225_601_000_000 + i * 10**6,
                    windows=2,
                    peak_score=2.0 + i,
                    threshold=1.0,
                    model_version=1,
                    channels=[{"name": "c1", "share": 0.7}, {"name": "c0", "share": 0.3}],
                    opened_at=utcnow(),
                    closed_at=utcnow(),
                )
            )


def stored_count(sessions: sessionmaker[Session], series_id: int) -> int:
    with sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(WindowScore)
                .where(WindowScore.series_id == series_id)
            )
            or 0
        )


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - began


def settled(sessions: sessionmaker[Session], series_id: int, timeout: float = 10.0) -> None:
    """Wait until the detector has nothing left to do for the series."""
    from app.db.models import DetectState

    def idle() -> bool:
        with sessions() as session:
            state = session.get(DetectState, series_id)
            return state is None or (state.dirty_from is None and state.claimed_from is None)

    wait_for(idle, timeout)


@pytest.fixture
def stream() -> Stream:
    return make_stream(800, seed=3)


@pytest.fixture
def setup(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_headers: Callable[..., Headers],
) -> Iterator[Setup]:
    series_id, _ = trained_series(sessions, settings, n_points=TRAINED)
    headers = make_headers("ingest", "read", "label", name="operator")
    with TestClient(create_app(settings)) as client:
        yield Setup(client, sessions, settings, series_id, headers)
