"""The per-key rate limit, shared by every API process through the database."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.errors import RateLimited
from app.main import create_app
from app.ratelimit import check_rate

Headers = dict[str, str]


def test_the_limit_holds_across_processes(
    settings: Settings, make_headers: Callable[..., Headers]
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 3})
    headers = make_headers("read")
    other = make_headers("read")
    # Two app instances on one database stand for two API processes.
    with TestClient(create_app(limited)) as one, TestClient(create_app(limited)) as two:
        statuses = [
            one.get("/v1/jobs/1", headers=headers).status_code,
            two.get("/v1/jobs/1", headers=headers).status_code,
            one.get("/v1/jobs/1", headers=headers).status_code,
        ]
        assert 429 not in statuses
        refused = two.get("/v1/jobs/1", headers=headers)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["content-type"] == "application/problem+json"
        # Another key has its own budget.
        assert one.get("/v1/jobs/1", headers=other).status_code == 404


def _admitted(sessions: sessionmaker[Session], at: float, limit: int = 10) -> bool:
    with sessions() as session:
        try:
            check_rate(session=session, principal="k" * 64, limit=limit, now=at)
        except RateLimited:
            return False
    return True


def test_no_double_burst_across_a_minute_boundary(sessions: sessionmaker[Session]) -> None:
    """A fixed one-minute window let the whole limit through at 59.9 s and again at 60.1 s
    (issue 12, item 8): 2 × the limit in 0.2 s."""
    minute = 1_800_000_000 - 1_800_000_000 % 60 + 60  # a minute boundary
    assert all(_admitted(sessions, minute - 0.1) for _ in range(10))
    assert not any(_admitted(sessions, minute + 0.1) for _ in range(10))


def test_after_a_burst_the_key_regains_one_request_per_interval(
    sessions: sessionmaker[Session],
) -> None:
    start = 1_800_000_000.0
    assert sum(_admitted(sessions, start) for _ in range(12)) == 10  # the burst
    with sessions() as session, pytest.raises(RateLimited) as refused:
        check_rate(session=session, principal="k" * 64, limit=10, now=start + 1)
    assert refused.value.headers == {"Retry-After": "5"}  # one every 6 s
    assert not _admitted(sessions, start + 5.9)
    assert _admitted(sessions, start + 6.0)
    assert not _admitted(sessions, start + 6.1)
    assert _admitted(sessions, start + 12.0)
    # A client that keeps sending gets the limit per minute: after the burst it regained
    # while idle, ten a minute (five minutes of one attempt every 0.5 s).
    admitted = [_admitted(sessions, start + 60 + t / 2) for t in range(600)]
    assert sum(admitted[:120]) <= 10 + 10  # the first minute: the burst, then the pace
    assert 39 <= sum(admitted[120:]) <= 41  # four minutes at the pace
