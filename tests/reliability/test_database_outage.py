"""The database goes away while clients ingest and score, then comes back.

Runs on a throw-away PostgreSQL cluster of its own (initdb + pg_ctl), never the machine's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import migrate
from app.db.session import make_engine, make_sessionmaker
from app.main import create_app
from app.security import create_key
from tests.conftest import IN_CI
from tests.utils.proc import Cluster, serve
from tests.utils.stream import create_series, insert_points, make_stream, windows_of
from tests.utils.trained import train_now

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    reason = Cluster.available()
    if reason:
        if IN_CI:
            pytest.fail(f"cannot start a throw-away PostgreSQL cluster: {reason}")
        pytest.skip(f"cannot start a throw-away PostgreSQL cluster: {reason}")
    cluster = Cluster()
    try:
        cluster.init()
        cluster.start()
        with psycopg.connect(cluster.url(driver="postgresql"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE vigil")
        yield cluster
    finally:
        cluster.remove()


def _send(
    client: httpx.Client, series_id: int, ts: np.ndarray, values: np.ndarray
) -> httpx.Response:
    return client.post(
        f"/v1/series/{series_id}/points",
        json={"timestamps": (ts / 1e6).tolist(), "values": values.tolist()},
        timeout=30,
    )


def test_requests_get_503_during_an_outage_and_everything_recovers(cluster: Cluster) -> None:
    url = cluster.url("vigil")
    migrate.upgrade(url)
    sessions = make_sessionmaker(make_engine(url, role="tests"))
    with sessions() as session, session.begin():
        _, key = create_key(session=session, name="ops", scopes=["admin"])
    stream = make_stream(1200)
    halves = [(0, 600), (600, 1200)]

    with serve(url, VIGIL_MODEL_POLL_SECONDS="0.5") as (base, _process):
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})
        created = client.post(
            "/v1/series",
            json={"name": "pump", "channels": ["a", "b", "c"], "window_size": 16, "stride": 8},
        )
        assert created.status_code == 201, created.text
        series_id = created.json()["id"]
        lo, hi = halves[0]
        assert _send(client, series_id, stream.ts[lo:hi], stream.values[lo:hi]).status_code == 200
        settings = Settings(
            database_url=url, train_min_steps=8, train_max_steps=16, min_train_windows=4
        )
        train_now(sessions, settings, series_id)
        window = windows_of(stream, window_size=16, stride=8)[:1].tolist()
        deadline = time.monotonic() + 10
        while True:  # wait until the API has seen the new model
            scored = client.post("/v1/score", json={"series_id": series_id, "windows": window})
            if scored.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert scored.status_code == 200, scored.text

        cluster.stop("fast")
        lo, hi = halves[1]
        started = time.monotonic()
        refused = _send(client, series_id, stream.ts[lo:hi], stream.values[lo:hi])
        assert time.monotonic() - started < 15, "a request hung while the database was down"
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"] == "application/problem+json"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        scoring = client.post("/v1/score", json={"series_id": series_id, "windows": window})
        assert scoring.status_code == 503
        assert client.get("/healthz").status_code == 200  # the process itself is alive

        cluster.start()
        # The client retries its batch until it is accepted; no restart of Vigil.
        deadline = time.monotonic() + 30
        while True:
            retried = _send(client, series_id, stream.ts[lo:hi], stream.values[lo:hi])
            if retried.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(float(retried.headers.get("retry-after", "1")) / 5)
        assert retried.status_code == 200, retried.text
        assert client.get("/readyz").status_code == 200
        assert (
            client.post("/v1/score", json={"series_id": series_id, "windows": window}).status_code
            == 200
        )

    with psycopg.connect(cluster.url("vigil", driver="postgresql")) as conn:
        rows = conn.execute(
            "SELECT ts, count(*) OVER () FROM points WHERE series_id = %s ORDER BY ts", (series_id,)
        ).fetchall()
    assert [
        r[0] for r in rows
    ] == stream.ts.tolist()  # exactly what was sent: none lost, no duplicates


def test_idempotent_requests_get_503_when_the_database_dies_under_them(cluster: Cluster) -> None:
    """Issue 12, items 1 and 2: a request holding an Idempotency-Key when the database goes
    away gets a 503 (the app in-process, so that an exception escaping after the answer fails
    the test instead of dropping the connection), and once the database is back a retry with
    the same key performs the operation exactly once instead of answering 409 for 24 hours."""
    url = cluster.url("vigil")
    migrate.upgrade(url)
    engine = make_engine(url, role="tests")
    sessions = make_sessionmaker(engine)
    with sessions() as session, session.begin():
        _, key = create_key(session=session, name="ops", scopes=["train"])
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(200))
    engine.dispose()
    path = f"/v1/series/{series_id}/train"
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "train-during-outage"}
    libpq = cluster.url("vigil", driver="postgresql")
    settings = Settings(database_url=url, embedded_worker=False, score_process=False)

    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        locker = psycopg.connect(libpq)
        locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")  # holds the request in its route
        in_flight = pool.submit(client.post, path, headers=headers)
        deadline = time.monotonic() + 20
        with psycopg.connect(libpq, autocommit=True) as watcher:
            while watcher.execute("SELECT count(*) FROM idempotency_keys").fetchone() != (1,):
                assert time.monotonic() < deadline, "the request never claimed its key"
                time.sleep(0.05)
        cluster.stop("fast")  # ends every session: the request's query fails mid-route
        locker.close()
        during = in_flight.result(30)
        assert during.status_code == 503, during.text
        assert int(during.headers["retry-after"]) > 0
        assert during.headers["content-type"] == "application/problem+json"
        # While it is down, a new claim cannot even be made: 503 again, not a hang.
        assert client.post(path, headers=headers).status_code == 503

        cluster.start()
        deadline = time.monotonic() + 30
        while True:
            retried = client.post(path, headers=headers)
            if retried.status_code not in (409, 503) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert retried.status_code == 202, retried.text
        replayed = client.post(path, headers=headers)
        assert replayed.status_code == 202
        assert replayed.headers["idempotent-replayed"] == "true"

    with psycopg.connect(libpq) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
