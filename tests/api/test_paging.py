"""Every list pages the same way: walk all pages, each item once; a bad cursor is a 422."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job, ModelVersion
from tests.utils.api_helpers import Headers, assert_problem, create_series
from tests.utils.stream import insert_points, make_stream

T0 = 1767225600


def walk(
    client: TestClient, path: str, key: str, headers: Headers, **params: Any
) -> list[dict[str, Any]]:
    """Every item of a list, page by page (3 at a time)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        query = {**params, "limit": 3, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page[key]) <= 3
        items.extend(page[key])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the pages never ended")


@pytest.fixture
def filled(client: TestClient, admin: Headers, sessions: sessionmaker[Session]) -> int:
    """Eight series; the first with 11 labels, 10 jobs, 7 model versions and 20 points."""
    ids = [create_series(client, admin, name=f"pump-{i}")["id"] for i in range(8)]
    first = ids[0]
    insert_points(sessions, first, make_stream(20))
    for i in range(11):
        label = {"series_id": first, "start": T0 + i, "end": T0 + i, "label": "idle"}
        assert client.post("/v1/labels", json=label, headers=admin).status_code == 201
    with sessions() as session, session.begin():
        session.execute(
            insert(Job),
            [{"series_id": first, "status": "failed", "reason": "manual"} for _ in range(10)],
        )
        session.execute(
            insert(ModelVersion),
            [
                {
                    "series_id": first,
                    "version": v,
                    "status": "retired",
                    "artifact": b"x",
                    "sha256": "0" * 64,
                    "metrics": {},
                }
                for v in range(1, 8)
            ],
        )
    return first


def test_every_list_walks_every_item_once(client: TestClient, admin: Headers, filled: int) -> None:
    series = walk(client, "/v1/series", "series", admin)
    assert [s["name"] for s in series] == [f"pump-{i}" for i in range(8)]
    labels = walk(client, "/v1/labels", "labels", admin)
    assert len({label["id"] for label in labels}) == len(labels) == 11
    assert [label["id"] for label in labels] == sorted(label["id"] for label in labels)
    jobs = walk(client, "/v1/jobs", "jobs", admin, series_id=filled)
    assert [job["id"] for job in jobs] == sorted((job["id"] for job in jobs), reverse=True)
    assert len({job["id"] for job in jobs}) == 10
    versions = walk(client, f"/v1/series/{filled}/models", "versions", admin)
    assert [v["version"] for v in versions] == list(range(1, 8))
    points = walk(client, f"/v1/series/{filled}/points", "timestamps", admin)
    assert len(points) == len(set(points)) == 20 and points == sorted(points)


def test_points_pages_keep_to_the_range(client: TestClient, admin: Headers, filled: int) -> None:
    points = walk(
        client, f"/v1/series/{filled}/points", "timestamps", admin, start=T0 + 5, end=T0 + 14
    )
    assert len(points) == 10


def test_the_deprecated_ways_to_page_still_work(
    client: TestClient, admin: Headers, filled: int
) -> None:
    newest = client.get("/v1/jobs", params={"limit": 2}, headers=admin).json()["jobs"]
    older = client.get("/v1/jobs", params={"before": newest[-1]["id"]}, headers=admin).json()
    assert older["jobs"][0]["id"] == newest[-1]["id"] - 1
    second = client.get("/v1/series", params={"limit": 1, "offset": 1}, headers=admin).json()
    assert [s["name"] for s in second["series"]] == ["pump-1"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/series",
        "/v1/labels",
        "/v1/jobs",
        "/v1/series/{id}/models",
        "/v1/series/{id}/points",
        "/v1/audit",
    ],
)
@pytest.mark.parametrize("cursor", ["not-a-cursor", "W10", "WyJhIiwgMV0", "x" * 600])
def test_a_bad_cursor_is_422_naming_it(
    client: TestClient, admin: Headers, filled: int, path: str, cursor: str
) -> None:
    response = client.get(path.format(id=filled), params={"cursor": cursor}, headers=admin)
    assert_problem(response, 422, "cursor")


def test_a_cursor_of_another_list_is_not_trusted_blindly(
    client: TestClient, admin: Headers, filled: int, make_headers: Callable[..., Headers]
) -> None:
    page = client.get("/v1/series", params={"limit": 1}, headers=admin).json()
    # A series cursor on the labels list is a well-formed cursor: it pages, never 500s.
    response = client.get("/v1/labels", params={"cursor": page["next_cursor"]}, headers=admin)
    assert response.status_code == 200
