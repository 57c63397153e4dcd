"""Request metrics carry the route template, also for requests FastAPI's routing never saw."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.utils.api_helpers import Headers, counter_value, create_series

COUNTED = [
    ("GET", "/docs", "200"),
    ("GET", "/redoc", "200"),
    ("GET", "/openapi.json", "200"),
    ("GET", "/docs/static/{path:path}", "200"),
    ("GET", "unmatched", "404"),
    ("POST", "/v1/labels", "201"),
    ("POST", "unmatched", "201"),
]


def counts(client: TestClient) -> dict[tuple[str, str, str], float]:
    """The request counter for each of COUNTED (the registry lives as long as the process)."""
    return {
        (method, route, status): counter_value(
            client, "vigil_http_requests", method=method, route=route, status=status
        )
        for method, route, status in COUNTED
    }


def grown(client: TestClient, act: Callable[[], None]) -> dict[tuple[str, str, str], float]:
    before = counts(client)
    act()
    after = counts(client)
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


def test_docs_and_the_openapi_document_are_counted_by_route(client: TestClient) -> None:
    def browse() -> None:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/static/swagger-ui.css"):
            assert client.get(path).status_code == 200
        assert client.get("/no/such/path").status_code == 404

    assert grown(client, browse) == {
        ("GET", "/docs", "200"): 1,
        ("GET", "/redoc", "200"): 1,
        ("GET", "/openapi.json", "200"): 1,
        ("GET", "/docs/static/{path:path}", "200"): 1,
        ("GET", "unmatched", "404"): 1,
    }


def test_an_idempotent_replay_is_counted_under_its_route(
    client: TestClient, admin: Headers
) -> None:
    series = create_series(client, admin)
    body = {"series_id": series["id"], "start": 0, "end": 10, "label": "idle"}
    headers = {**admin, "Idempotency-Key": "replay-me"}

    def post_twice() -> None:
        assert client.post("/v1/labels", json=body, headers=headers).status_code == 201
        again = client.post("/v1/labels", json=body, headers=headers)
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"

    assert grown(client, post_twice) == {("POST", "/v1/labels", "201"): 2}
