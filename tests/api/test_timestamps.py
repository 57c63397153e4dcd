"""Every timestamp in a response has one form: RFC 3339, UTC, `Z`."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.schemas.common import format_us, format_us_array
from tests.utils.api_helpers import Headers, create_series

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
TIME_FIELDS = {"created_at", "updated_at", "start", "end", "deleted_at", "started_at"}


def times_in(document: Any) -> list[str]:
    """Every value of a timestamp field in a JSON document, however deep."""
    found: list[str] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key in TIME_FIELDS and value is not None:
                found.append(value)
            elif key == "timestamps":
                found.extend(value)
            else:
                found.extend(times_in(value))
    elif isinstance(document, list):
        for item in document:
            found.extend(times_in(item))
    return found


def test_series_points_labels_and_jobs_give_one_form(client: TestClient, admin: Headers) -> None:
    series = create_series(client, admin)
    body = {
        "timestamps": [
            1_767_225_600,
            1_767_225_600.25,
            "2026-01-01T02:00:02+02:00",
            *range(1_767_225_603, 1_767_225_640),
        ],
        "values": [[1.0, 2.0, 3.0]] * 40,
    }
    assert client.post(f"/v1/series/{series['id']}/points", json=body, headers=admin).is_success
    documents = [
        series,
        client.get(f"/v1/series/{series['id']}/points", headers=admin).json(),
        client.post(
            "/v1/labels",
            json={
                "series_id": series["id"],
                "start": 1_767_225_600.5,
                "end": 1_767_225_610,
                "label": "idle",
            },
            headers=admin,
        ).json(),
        client.post(f"/v1/series/{series['id']}/train", headers=admin).json(),
    ]
    times = times_in(documents)
    assert len(times) >= 40 + 6
    assert [t for t in times if not RFC3339_UTC.match(t)] == []
    points = documents[1]["timestamps"]
    assert points[:3] == [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.250000Z",
        "2026-01-01T00:00:02Z",
    ]
    assert documents[2]["start"] == "2026-01-01T00:00:00.500000Z"


def test_the_vectorised_form_is_the_scalar_one() -> None:
    us = np.array([0, 1, 999_999, 1_000_000, 1_767_225_600_250_000, 7_258_118_399_999_999])
    assert format_us_array(us) == [format_us(int(u)) for u in us]
    assert format_us(0) == "1970-01-01T00:00:00Z"
    assert format_us(1) == "1970-01-01T00:00:00.000001Z"
