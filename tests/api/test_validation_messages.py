"""Validation errors say what to send, in the client's terms: no `body.`, union tags or
pydantic's `Value error,`."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.utils.api_helpers import Headers, assert_problem, create_series

SCORE_ID = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        (
            "/v1/labels",
            {"score_id": SCORE_ID, "label": "false_positive", "start": 0},
            "start: is not a field this request accepts; remove it",
        ),
        (
            "/v1/labels",
            {"series_id": 1, "start": 10, "end": 5, "label": "idle"},
            "end must not be before start",
        ),
        ("/v1/labels", [1], "the body must be a JSON object"),
        (
            "/v1/series",
            {"name": "pump 7", "channels": [], "window_size": 8, "stride": 4},
            "name: must be 1 to 100 letters, digits, '-', '_' or '.'; "
            "channels: must hold at least 1 item, not 0",
        ),
        (
            "/v1/series",
            {"name": "p", "channels": ["a"], "window_size": 8, "stride": 9},
            "stride (9) must not exceed window_size (8)",
        ),
    ],
)
def test_body_errors_name_fields_as_sent(
    client: TestClient, admin: Headers, path: str, body: Any, detail: str
) -> None:
    create_series(client, admin)
    problem = assert_problem(client.post(path, json=body, headers=admin), 422)
    assert problem["detail"] == detail


def test_parameter_errors_say_which_kind(client: TestClient, admin: Headers) -> None:
    problem = assert_problem(client.get("/v1/series?limit=0", headers=admin), 422)
    assert problem["detail"] == (
        "query parameter limit: Input should be greater than or equal to 1"
    )
    assert problem["errors"][0]["loc"] == ["query", "limit"]
