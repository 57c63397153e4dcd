"""Only what the documentation says is accepted, and openapi.json says what the server does
(issue 12, item 9).

float() reads `1_5` as 15 and Arabic-Indic digits as numbers; datetime.fromisoformat reads
week dates and the basic format: none of them is documented, so none is taken. Where the
server and openapi.json disagreed (the date-time range, PATCH `classes` names, the
Idempotency-Key, the scoring `series_id`), a value is valid for one exactly when it is for
the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Point
from app.schemas.common import TimestampError, to_us
from tests.utils.api_helpers import assert_problem, create_series

Headers = dict[str, str]


def _points(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Point)) or 0


def _csv(client: TestClient, headers: Headers, series_id: int, text: str) -> Any:
    return client.post(
        f"/v1/series/{series_id}/points",
        content=text.encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ("1_5", "'1_5'"),  # float() says 15.0
        ("١٢", "'١٢'"),  # Arabic-Indic twelve: float() says 12.0
        ("１", "'１'"),  # a fullwidth one
    ],
)
def test_csv_values_are_ascii_decimal_numbers(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session], cell: str, shown: str
) -> None:
    series = create_series(client, admin)
    text = f"timestamp,flow,pressure,temperature\n1767225600,1,2,3\n1767225601,1,{cell},3\n"
    response = _csv(client, admin, series["id"], text)
    assert_problem(response, 422, "line 3, column 'pressure'", f"{shown} is not a number")
    assert _points(sessions) == 0


@pytest.mark.parametrize(
    "stamp",
    [
        "1_800_000_006",  # float() reads digit groups
        "١٨٠٠٠٠٠٠٠٦",  # Arabic-Indic digits
        "2026-W01-1",  # an ISO week date: fromisoformat says 2025-12-29
        "20261122T080000Z",  # the basic format
        "2026-11-22T08",  # an hour alone
        "2026-11-22T08:00",  # no seconds
        "2026-11-22T08:00:00,5Z",  # a comma fraction
        "2026-11-22T08:00:00+0100",  # an offset without its colon
        "2026-11-22",  # a date is not a date-time
        " 2026-11-22T08:00:00Z",  # padding
    ],
)
def test_timestamps_are_only_the_documented_forms(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session], stamp: str
) -> None:
    series = create_series(client, admin)
    as_json = client.post(
        f"/v1/series/{series['id']}/points",
        json={"timestamps": [1767225600, stamp], "values": [[1, 2, 3], [1, 2, 3]]},
        headers=admin,
    )
    assert_problem(as_json, 422, "timestamps[1]: ")
    as_csv = _csv(
        client,
        admin,
        series["id"],
        f"timestamp,flow,pressure,temperature\n1767225600,1,2,3\n{stamp},1,2,3\n",
    )
    assert_problem(as_csv, 422, "line 3: ")
    label = client.post(
        "/v1/labels",
        json={"series_id": series["id"], "start": stamp, "end": 1767225700, "label": "idle"},
        headers=admin,
    )
    assert label.status_code == 422
    assert _points(sessions) == 0


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-22T08:00:00Z",
        "2026-11-22 08:00:00",
        "2026-11-22T08:00:00.123456789+05:30",
        "1800000006",
        "1800000006.25",
    ],
)
def test_the_documented_forms_are_read(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session], stamp: str
) -> None:
    series = create_series(client, admin)
    response = client.post(
        f"/v1/series/{series['id']}/points",
        json={"timestamps": [stamp], "values": [[1, 2, 3]]},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert _points(sessions) == 1


def _operation(client: TestClient, method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = client.app.openapi()["paths"][path][method]  # type: ignore[attr-defined]
    return operation


def _parameter(client: TestClient, method: str, path: str, name: str) -> dict[str, Any]:
    operation = _operation(client, method, path)
    schema: dict[str, Any] = next(p for p in operation["parameters"] if p["name"] == name)["schema"]
    return schema


def _server_reads(value: object) -> bool:
    try:
        to_us(value)
    except TimestampError:
        return False
    return True


@pytest.mark.parametrize(
    "stamp",
    [
        "1970-01-01T00:00:00Z",
        "2200-12-31T23:59:59.999999Z",
        "2026-11-22 08:00:00",
        "1969-12-31T23:59:59Z",  # years out of range: both refuse
        "2201-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "2026-W01-1",
        "2026-11-22T08",
        "2026-11-22T08:00:00+01",
    ],
)
def test_openapi_and_the_server_agree_on_date_times(client: TestClient, stamp: str) -> None:
    schema = _parameter(client, "get", "/v1/series/{series_id}/points", "start")
    assert jsonschema_rs.is_valid(schema, stamp) == _server_reads(stamp), schema


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("seal_leak", True), ("seal leak", False), ("", False), ("ø", False), ("x" * 101, False)],
)
def test_openapi_and_the_server_agree_on_patched_class_names(
    client: TestClient,
    make_headers: Callable[..., Headers],
    admin: Headers,
    name: str,
    accepted: bool,
) -> None:
    series = create_series(client, admin)
    body = {"classes": {name: "anomaly"}}
    components = client.app.openapi()["components"]  # type: ignore[attr-defined]
    schema = {**components["schemas"]["SeriesUpdate"], "components": components}
    assert jsonschema_rs.is_valid(schema, body) is accepted
    response = client.patch(f"/v1/series/{series['id']}", json=body, headers=admin)
    assert response.status_code == (200 if accepted else 422), response.text


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        ("3f1c-77aa", True),
        ('"3f1c-77aa"', True),  # the draft's sf-string
        ("k" * 255, True),
        ("k" * 256, False),
        ('"' + "k" * 254 + '"', False),  # 256 characters sent
        ('""', False),
        ('"k', False),
        ("a b", True),
        ('x"; DROP TABLE points; --', True),
        (" k", False),  # what HTTP would trim
        ("ø", False),
    ],
)
def test_openapi_and_the_server_agree_on_idempotency_keys(
    client: TestClient, admin: Headers, key: str, accepted: bool
) -> None:
    series = create_series(client, admin)
    path = f"/v1/series/{series['id']}/train"
    schema = _parameter(client, "post", "/v1/series/{series_id}/train", "Idempotency-Key")
    assert jsonschema_rs.is_valid(schema, key) is accepted
    headers: dict[str, str | bytes] = {**admin, "Idempotency-Key": key.encode("latin-1")}
    response = client.post(path, headers=headers)  # type: ignore[arg-type]
    assert (response.status_code != 400) is accepted, response.text


@pytest.mark.parametrize("series_id", [0, -1, 2**31, True, "1"])
def test_openapi_and_the_server_agree_on_the_scoring_series_id(
    client: TestClient, admin: Headers, series_id: object
) -> None:
    body = {"series_id": series_id, "windows": [[[1.0]]]}
    schema = _operation(client, "post", "/v1/score")["requestBody"]["content"]["application/json"]
    components = client.app.openapi()["components"]  # type: ignore[attr-defined]
    validator = jsonschema_rs.validator_for({**schema["schema"], "components": components})
    assert not validator.is_valid(body)
    response = client.post("/v1/score", json=body, headers=admin)
    assert_problem(response, 422, "series_id: ")
