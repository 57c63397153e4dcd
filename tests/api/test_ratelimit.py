"""The per-key rate limit, shared by every API process through the database."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

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
