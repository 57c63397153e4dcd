"""An Idempotency-Key whose request dies with its process (kill -9) is free again within
seconds, and a retry performs the operation exactly once (issue 12, item 1).

Runs a real `vigil serve` on the test database of the machine's Postgres; the request is held
inside its route by a lock on `jobs` taken from the test, so that the process dies at a known
point: after it claimed the key, before it performed the operation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from app.db.session import make_engine, make_sessionmaker
from app.idempotency import LEASE
from app.security import create_key
from tests.conftest import truncate_all
from tests.utils.proc import serve
from tests.utils.stream import create_series, insert_points, make_stream

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    truncate_all(postgres_url)
    yield postgres_url


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_key_left_pending_by_a_killed_server_is_retried_exactly_once(url: str) -> None:
    sessions = make_sessionmaker(make_engine(url, role="tests"))
    with sessions() as session, session.begin():
        _, plain = create_key(session=session, name="ops", scopes=["train"])
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(200))
    headers = {"Authorization": f"Bearer {plain}", "Idempotency-Key": "train-after-crash"}
    path = f"/v1/series/{series_id}/train"

    def count(sql: str) -> int:
        with psycopg.connect(_libpq(url)) as conn:
            row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(_libpq(url)) as locker, ThreadPoolExecutor(1) as pool:
        locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")  # held until rollback
        with serve(url, VIGIL_SCORE_PROCESS="false") as (base, process):
            in_flight = pool.submit(httpx.post, f"{base}{path}", headers=headers, timeout=60)
            wait_for(
                lambda: count("SELECT count(*) FROM idempotency_keys") == 1,
                timeout=20,
                what="the request to claim its key",
            )
            process.kill()  # kill -9: no finally, no shutdown, no chance to release the key
            process.wait(10)
            with pytest.raises(httpx.HTTPError):
                in_flight.result(30)
        locker.rollback()
    assert count("SELECT count(*) FROM jobs") == 0  # the operation was never performed

    with serve(url, VIGIL_SCORE_PROCESS="false") as (base, _process):
        client = httpx.Client(base_url=base, headers=headers, timeout=30)
        started = time.monotonic()
        while True:
            retried = client.post(path)
            if retried.status_code != 409 or time.monotonic() - started > 60:
                break
            time.sleep(0.2)
        waited = time.monotonic() - started
        assert retried.status_code == 202, retried.text
        assert waited < LEASE.total_seconds() + 5, f"the key stayed pending for {waited:.1f} s"
        replayed = client.post(path)
        assert replayed.status_code == 202
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json() == retried.json()
    assert count("SELECT count(*) FROM jobs") == 1  # exactly once
