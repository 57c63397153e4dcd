"""Contention on a healthy Postgres (issue 12, "lock pile-up"): a write that cannot get its row
locks or a pooled connection in time is rolled back and refused with 503 "busy, retry" and
Retry-After, distinct from "database unavailable"; it never commits later; and overlapping
batches sent in opposite orders take their locks in one order and do not deadlock.

Locks are held from a separate connection, as another writer would hold them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import DetectState, Point, Series
from app.db.session import Limits, make_engine, make_sessionmaker
from app.errors import busy_error
from app.main import create_app
from app.services.points import PointBatch, upsert_points
from tests.utils.api_helpers import Headers, assert_problem, create_series

on_postgres = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
US = 1_000_000


@pytest.fixture
def contended(settings: Settings) -> Iterator[TestClient]:
    """The app with short waits: half a second for a row lock, one pooled connection."""
    quick = settings.model_copy(
        update={
            "db_lock_timeout_seconds": 0.5,
            "db_pool_size": 1,
            "db_max_overflow": 0,
            "db_pool_timeout_seconds": 0.5,
            "detect_enabled": False,  # the detector's thread would share the one connection
        }
    )
    with TestClient(create_app(quick)) as test_client:
        yield test_client


def _psycopg_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


def _points(start: int, n: int, value: float) -> dict[str, object]:
    return {
        "timestamps": list(range(T0 + start, T0 + start + n)),
        "values": [[value, value, value] for _ in range(n)],
    }


def _stored(sessions: sessionmaker[Session], series_id: int) -> dict[int, float]:
    """Channel 0 of every stored point, by epoch second."""
    with sessions() as session:
        rows = session.execute(
            select(Point.ts, Point.values).where(Point.series_id == series_id).order_by(Point.ts)
        ).all()
    return {ts // US: float(np.frombuffer(blob, dtype="<f8")[0]) for ts, blob in rows}


def _assert_busy(response: object) -> None:
    body = assert_problem(response, 503, "busy, retry")
    assert body["title"] == "Service busy"
    assert response.headers["retry-after"] == "1"  # type: ignore[attr-defined]
    assert "unavailable" not in body["detail"]


@on_postgres
def test_a_row_lock_held_too_long_is_busy_and_the_write_never_commits(
    contended: TestClient,
    admin: Headers,
    database_url: str,
    sessions: sessionmaker[Session],
) -> None:
    series = create_series(contended, admin)
    path = f"/v1/series/{series['id']}/points"
    assert contended.post(path, json=_points(0, 10, 1.0), headers=admin).status_code == 200

    with psycopg.connect(_psycopg_url(database_url)) as other:
        # Another writer holds one stored point's row lock past the API's lock timeout.
        other.execute(
            "SELECT 1 FROM points WHERE series_id = %s AND ts = %s FOR UPDATE",
            (series["id"], (T0 + 5) * US),
        )
        started = time.monotonic()
        response = contended.post(path, json=_points(0, 10, 2.0), headers=admin)
        waited = time.monotonic() - started
        _assert_busy(response)
        assert waited < 5, "the request waited for the lock well past its timeout"
        assert "locked" in response.json()["detail"]
        other.rollback()

    time.sleep(0.3)  # long enough for a write that was still pending to commit
    assert _stored(sessions, series["id"]) == {T0 + k: 1.0 for k in range(10)}
    # The same batch again, once nothing holds the row: it commits (the 503 was retryable).
    again = contended.post(path, json=_points(0, 10, 2.0), headers=admin)
    assert again.status_code == 200, again.text
    assert again.json()["updated"] == 10
    assert _stored(sessions, series["id"]) == {T0 + k: 2.0 for k in range(10)}


@on_postgres
def test_a_batch_that_overwrites_waits_its_turn_and_is_busy_past_the_lock_timeout(
    contended: TestClient,
    admin: Headers,
    database_url: str,
    sessions: sessionmaker[Session],
) -> None:
    """Overwriting batches of a series take turns on its advisory lock: while another
    transaction holds the turn, a batch over stored points waits, and past the lock timeout
    it is refused as busy; a batch of new points only (an append) does not wait for it."""
    series = create_series(contended, admin)
    path = f"/v1/series/{series['id']}/points"
    assert contended.post(path, json=_points(0, 10, 1.0), headers=admin).status_code == 200

    with psycopg.connect(_psycopg_url(database_url)) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x56474C31, series["id"]))
        _assert_busy(contended.post(path, json=_points(5, 10, 2.0), headers=admin))
        appended = contended.post(path, json=_points(100, 10, 4.0), headers=admin)
        assert appended.status_code == 200, appended.text
        other.rollback()

    time.sleep(0.3)
    stored = _stored(sessions, series["id"])
    assert [stored[T0 + k] for k in range(10)] == [1.0] * 10
    assert [stored[T0 + 100 + k] for k in range(10)] == [4.0] * 10
    assert len(stored) == 20


@on_postgres
def test_an_append_that_waits_too_long_for_the_detector_mark_writes_nothing(
    contended: TestClient,
    admin: Headers,
    database_url: str,
    sessions: sessionmaker[Session],
) -> None:
    """New points whose detector mark (the per-series row every write updates last) stays
    locked are rolled back with the mark: neither is left behind."""
    series = create_series(contended, admin)
    path = f"/v1/series/{series['id']}/points"
    assert contended.post(path, json=_points(0, 10, 1.0), headers=admin).status_code == 200
    with sessions() as session:
        before = session.get(DetectState, series["id"])
        assert before is not None
        mark_before = (before.dirty_from, before.dirty_until)

    with psycopg.connect(_psycopg_url(database_url)) as other:
        other.execute("SELECT 1 FROM detect_state WHERE series_id = %s FOR UPDATE", (series["id"],))
        _assert_busy(contended.post(path, json=_points(100, 10, 3.0), headers=admin))
        other.rollback()

    time.sleep(0.3)
    assert sorted(_stored(sessions, series["id"])) == [T0 + k for k in range(10)]
    with sessions() as session:
        after = session.get(DetectState, series["id"])
        assert after is not None
        assert (after.dirty_from, after.dirty_until) == mark_before


@on_postgres
def test_a_busy_pool_answers_busy_not_unavailable(
    contended: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series = create_series(contended, admin)
    path = f"/v1/series/{series['id']}/points"
    runtime = contended.app.state.runtime  # type: ignore[attr-defined]
    with runtime.engine.connect():  # the process's only pooled connection, in use
        refused = contended.post(path, json=_points(0, 5, 1.0), headers=admin)
        _assert_busy(refused)
        assert "connection" in refused.json()["detail"]
        ready = contended.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"].startswith("busy, retry")
    assert contended.post(path, json=_points(0, 5, 1.0), headers=admin).status_code == 200
    assert len(_stored(sessions, series["id"])) == 5


@on_postgres
def test_a_statement_past_its_timeout_is_busy(database_url: str) -> None:
    """The API's connections carry the statement timeout, and its error maps to busy."""
    engine = make_engine(database_url, role="api", limits=Limits(statement_timeout=0.2))
    try:
        with pytest.raises(Exception) as caught, engine.connect() as connection:
            connection.exec_driver_sql("SELECT pg_sleep(2)")
    finally:
        engine.dispose()
    busy = busy_error(caught.value)
    assert busy is not None and busy.status_code == 503
    assert busy.detail.startswith("busy, retry") and "statement timeout" in busy.detail


def test_contention_errors_are_told_apart_from_outages() -> None:
    assert busy_error(sqlite3.OperationalError("database is locked")) is not None
    assert busy_error(sqlite3.OperationalError("unable to open database file")) is None
    assert busy_error(psycopg.OperationalError("connection refused")) is None


@on_postgres
def test_overlapping_batches_in_opposite_orders_do_not_deadlock(
    settings: Settings, database_url: str, sessions: sessionmaker[Session]
) -> None:
    """Eight writers, half sending their rows newest first, over one range of one series:
    every batch commits (no deadlock, no lock timeout), and each point ends with the value of
    a batch that wrote it."""
    with sessions() as session, session.begin():
        series = Series(
            name="contended",
            channels=["a", "b"],
            window_size=8,
            stride=4,
            classes={"normal": "normal", "anomaly": "anomaly"},
        )
        session.add(series)
    engine = make_engine(database_url, role="api", limits=Limits.of(settings))
    factory = make_sessionmaker(engine)
    start = threading.Barrier(8)

    def write(writer: int) -> list[int]:
        outcomes = []
        for round_ in range(5):
            ts = (T0 + np.arange(0, 400, dtype=np.int64)) * US
            values = np.full((400, 2), float(writer * 100 + round_))
            if writer % 2:  # newest first
                ts, values = ts[::-1].copy(), values[::-1].copy()
            if round_ == 0:
                start.wait()
            with factory() as session:
                result = upsert_points(
                    session=session, series=series, batch=PointBatch(ts=ts, values=values)
                )
            outcomes.append(result.inserted + result.updated)
        return outcomes

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(write, range(8)))
    finally:
        engine.dispose()
    assert all(len(r) == 5 for r in results)
    assert sum(sum(r) for r in results) >= 400  # every point was written at least once
    stored = _stored(sessions, series.id)
    assert sorted(stored) == [T0 + k for k in range(400)]
    written = {float(w * 100 + r) for w in range(8) for r in range(5)}
    assert set(stored.values()) <= written
    assert len(set(stored.values())) == 1  # each batch is atomic: the last one holds every point
