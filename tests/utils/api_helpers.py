"""Helpers for API tests: series through the API, problem documents, and Prometheus counters."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

Headers = dict[str, str]

CHANNELS = ["flow", "pressure", "temperature"]


def series_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "pump-7",
        "channels": list(CHANNELS),
        "window_size": 8,
        "stride": 4,
        "classes": {"idle": "normal", "bearing_fault": "anomaly"},
    }
    body.update(overrides)
    return body


def create_series(client: TestClient, headers: Headers, **overrides: Any) -> dict[str, Any]:
    """POST /v1/series and return the created series (asserting 201)."""
    response = client.post("/v1/series", json=series_body(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def assert_problem(response: Any, status: int, *fragments: str) -> dict[str, Any]:
    """An RFC 9457 problem document with `status` whose detail contains every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for fragment in fragments:
        assert fragment in body["detail"], f"{fragment!r} not in {body['detail']!r}"
    return body


def counter_value(client: TestClient, name: str, **labels: str) -> float:
    """The value of counter `name` (without `_total`) with exactly these labels; 0 if absent."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_total" and sample.labels == labels:
                return float(sample.value)
    return 0.0
