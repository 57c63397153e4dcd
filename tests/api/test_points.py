"""POST/GET /v1/series/{id}/points: JSON and CSV ingestion, upsert semantics, hostile input."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Point
from app.main import create_app
from tests.utils.api_helpers import Headers, assert_problem, counter_value, create_series

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z in epoch seconds


@pytest.fixture
def series(client: TestClient, admin: Headers) -> dict[str, Any]:
    """A series with channels flow, pressure, temperature."""
    return create_series(client, admin)


def post_json(client: TestClient, series_id: int, body: Any, headers: Headers) -> Any:
    return client.post(f"/v1/series/{series_id}/points", json=body, headers=headers)


def post_raw(
    client: TestClient, series_id: int, content: bytes | str, content_type: str, headers: Headers
) -> Any:
    return client.post(
        f"/v1/series/{series_id}/points",
        content=content,
        headers={**headers, "Content-Type": content_type},
    )


def read_back(client: TestClient, series_id: int, headers: Headers, **params: Any) -> Any:
    response = client.get(f"/v1/series/{series_id}/points", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def stored_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Point)) or 0)


def ingested(
    received: int, *, inserted: int, updated: int = 0, unchanged: int = 0, warnings: Any = ()
) -> dict[str, Any]:
    return {
        "received": received,
        "inserted": inserted,
        "updated": updated,
        "unchanged": unchanged,
        "warnings": list(warnings),
    }


def iso(seconds: int) -> str:
    """The form of every timestamp in a response: RFC 3339, UTC, Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_json_batch_is_stored_and_read_back(
    client: TestClient, series: dict[str, Any], make_headers: Callable[..., Headers]
) -> None:
    body = {
        "timestamps": [
            "2026-01-01T00:00:00Z",
            "2026-01-01T02:00:01+02:00",  # 00:00:01 UTC
            "2026-01-01T00:00:02",  # no offset: UTC
            T0 + 3,
            T0 + 3.25,
            "2026-01-01T00:00:04.000001Z",
        ],
        "values": [[1, 2, 3], [0.1, -2.5, 1e300], [4, 5, 6], [7, 8, 9], [1.5, 2.5, 3.5], [0, 0, 0]],
    }
    response = post_json(client, series["id"], body, make_headers("ingest"))
    assert response.status_code == 200
    assert response.json() == ingested(
        6,
        inserted=6,
        warnings=[
            "1 timestamp had no UTC offset and was taken as UTC; end it with Z (or an offset "
            "such as +01:00) to say which time is meant"
        ],
    )
    stored = read_back(client, series["id"], make_headers("read"))
    assert stored["timestamps"] == [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:02Z",
        "2026-01-01T00:00:03Z",
        "2026-01-01T00:00:03.250000Z",
        "2026-01-01T00:00:04.000001Z",
    ]
    assert stored["values"] == [
        [1.0, 2.0, 3.0],
        [0.1, -2.5, 1e300],
        [4.0, 5.0, 6.0],
        [7.0, 8.0, 9.0],
        [1.5, 2.5, 3.5],
        [0.0, 0.0, 0.0],
    ]


def test_resending_a_batch_changes_nothing(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(2000, 3))
    body = {"timestamps": [T0 + i for i in range(2000)], "values": values.tolist()}
    first = post_json(client, series["id"], body, admin)
    assert first.json() == ingested(2000, inserted=2000)
    before = read_back(client, series["id"], admin, limit=5000)
    second = post_json(client, series["id"], body, admin)
    assert second.status_code == 200
    assert second.json() == ingested(2000, inserted=0, unchanged=2000)
    after = read_back(client, series["id"], admin, limit=5000)
    assert after == before
    assert stored_count(sessions) == 2000
    assert np.array_equal(np.array(after["values"]), values)  # float64 bits survive the trip


def test_an_overlapping_batch_overwrites_and_counts_each_side(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    post_json(client, series["id"], {"timestamps": [T0, T0 + 1], "values": [[1, 1, 1]] * 2}, admin)
    body = {"timestamps": [T0 + 1, T0 + 2, T0 + 3], "values": [[2, 2, 2], [3, 3, 3], [4, 4, 4]]}
    response = post_json(client, series["id"], body, admin)
    assert response.json() == ingested(3, inserted=2, updated=1)
    stored = read_back(client, series["id"], admin)
    assert stored["values"] == [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]


def test_a_batch_that_changes_some_values_counts_only_those_as_updated(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    body = {"timestamps": [T0 + i for i in range(4)], "values": [[i, i, i] for i in range(4)]}
    post_json(client, series["id"], body, admin)
    body["values"][1] = [9, 9, 9]
    body["timestamps"].append(T0 + 4)
    body["values"].append([4, 4, 4])
    response = post_json(client, series["id"], body, admin)
    assert response.json() == ingested(5, inserted=1, updated=1, unchanged=3)
    assert read_back(client, series["id"], admin)["values"][1] == [9, 9, 9]


def test_timestamps_without_an_offset_are_utc_and_the_response_says_so(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    body = {
        "timestamps": ["2026-01-01T00:00:00", "2026-01-01T00:00:01Z", "2026-01-01 00:00:02"],
        "values": [[1, 1, 1]] * 3,
    }
    response = post_json(client, series["id"], body, admin)
    (warning,) = response.json()["warnings"]
    assert warning.startswith("2 timestamps had no UTC offset and were taken as UTC")
    stored = read_back(client, series["id"], admin)
    assert stored["timestamps"] == [iso(T0), iso(T0 + 1), iso(T0 + 2)]
    text = "timestamp,flow,pressure,temperature\n2026-01-01T00:00:03,1,1,1\n"
    csv = post_raw(client, series["id"], text.encode(), "text/csv", admin)
    assert csv.json()["warnings"][0].startswith("1 timestamp had no UTC offset and was taken")
    aware = {"timestamps": ["2026-01-01T00:00:04+00:00", T0 + 5], "values": [[1, 1, 1]] * 2}
    assert post_json(client, series["id"], aware, admin).json()["warnings"] == []


def test_a_repeated_timestamp_within_a_batch_keeps_its_last_row(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    body = {
        "timestamps": [T0 + 5, T0, "2026-01-01T00:00:05Z", T0 + 1],
        "values": [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]],
    }
    response = post_json(client, series["id"], body, admin)
    assert response.json() == ingested(4, inserted=3)
    stored = read_back(client, series["id"], admin)
    assert stored["timestamps"] == [iso(T0), iso(T0 + 1), iso(T0 + 5)]
    assert stored["values"] == [[2, 2, 2], [4, 4, 4], [3, 3, 3]]


def test_csv_columns_in_any_order_are_put_in_channel_order(
    client: TestClient, series: dict[str, Any], make_headers: Callable[..., Headers]
) -> None:
    text = (
        "\ufefftimestamp, temperature ,flow,pressure\r\n"
        "2026-01-01T00:00:00Z,30.5,1.0,2.0\r\n"
        "\r\n"
        f"{T0 + 1},31,1.5,2.5\r\n"
        f"{T0 + 2}.5,32,-1e-3,2\r\n"
    )
    response = post_raw(client, series["id"], text.encode(), "text/csv", make_headers("ingest"))
    assert response.status_code == 200, response.text
    assert response.json() == ingested(3, inserted=3)
    stored = read_back(client, series["id"], make_headers("read"))
    assert stored["timestamps"] == [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:02.500000Z",
    ]
    assert stored["values"] == [[1.0, 2.0, 30.5], [1.5, 2.5, 31.0], [-0.001, 2.0, 32.0]]
    again = post_raw(
        client, series["id"], text.encode(), "text/csv; charset=utf-8", make_headers("ingest")
    )
    assert again.json() == ingested(3, inserted=0, unchanged=3)


def test_read_back_honours_start_end_and_limit(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    body = {"timestamps": [T0 + i for i in range(10)], "values": [[i, i, i] for i in range(10)]}
    post_json(client, series["id"], body, admin)
    window = read_back(client, series["id"], admin, start=T0 + 2, end=iso(T0 + 5))
    assert window["timestamps"] == [iso(T0 + i) for i in range(2, 6)]
    assert window["values"] == [[i, i, i] for i in range(2, 6)]
    first = read_back(client, series["id"], admin, limit=3)
    assert first["timestamps"] == [iso(T0 + i) for i in range(3)]
    assert read_back(client, series["id"], admin, start=T0 + 100) == {
        "timestamps": [],
        "values": [],
        "next_cursor": None,
    }
    url = f"/v1/series/{series['id']}/points"
    assert_problem(client.get(url, params={"limit": 100_001}, headers=admin), 422, "limit")
    assert_problem(client.get(url, params={"start": "soon"}, headers=admin), 422, "start")
    assert_problem(client.get("/v1/series/999/points", headers=admin), 404, "series 999")


def test_unknown_series_is_404(client: TestClient, admin: Headers) -> None:
    response = post_json(client, 999, {"timestamps": [T0], "values": [[1, 2, 3]]}, admin)
    assert_problem(response, 404, "series 999 does not exist")
    response = post_json(client, 2**31, {"timestamps": [T0], "values": [[1, 2, 3]]}, admin)
    assert_problem(response, 422, "series_id")


def test_a_header_of_many_columns_is_refused_quickly(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    header = "timestamp," + ",".join(f"c{i}" for i in range(50_000)) + "\n"
    response = post_raw(client, series["id"], header + "1,2\n", "text/csv", admin)
    body = assert_problem(response, 422, "missing 'flow'", "unknown 'c0'", "and 49992 more")
    assert len(body["detail"]) < 1000


def test_ingestion_counts_points_in_metrics(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    before = counter_value(client, "vigil_points_ingested", series="pump-7")
    body = {"timestamps": [T0, T0, T0 + 1], "values": [[1, 2, 3]] * 3}
    post_json(client, series["id"], body, admin)
    post_json(client, series["id"], body, admin)
    assert counter_value(client, "vigil_points_ingested", series="pump-7") == before + 6


ROW = [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b'{"timestamps": [1', ["the body is not valid JSON"]),
        (b"   ", ["the body is empty"]),
        (b"[1, 2]", ["must be a JSON object", "not an array"]),
        (b'{"timestamps": [1767225600]}', ["values: is required"]),
        (
            b'{"timestamps": 5, "values": [[1, 2, 3]]}',
            ["timestamps: must be an array, not a number"],
        ),
        (
            b'{"timestamps": [1], "values": [[1,2,3]], "unit": "C"}',
            ["unknown field 'unit'; only timestamps and values"],
        ),
        (b'{"timestamps": [], "values": []}', ["the batch is empty"]),
        (
            b'{"timestamps": [1767225600, 1767225601], "values": [[1,2,3]]}',
            ["values: has 1 row but timestamps has 2 entries"],
        ),
        (
            b'{"timestamps": [1767225600, 1767225601], "values": [[1,2,3], [1,2]]}',
            [
                "values[1]: has 2 values; the series has 3 channels "
                "('flow', 'pressure', 'temperature')"
            ],
        ),
        (
            b'{"timestamps": [1767225600, 1767225601], "values": [[1,2,3], 7]}',
            ["values[1]: must be an array of 3 numbers", "not a number"],
        ),
        (
            b'{"timestamps": [1767225600, 1767225601], "values": [[1,2,3], [1,true,3]]}',
            [
                "values[1][1]: must be a finite number or null (missing) (channel 'pressure'), "
                "not a boolean"
            ],
        ),
        (
            b'{"timestamps": [1767225600], "values": [[1,2,"hot"]]}',
            ["values[0][2]", "'temperature'", "not a string ('hot')"],
        ),
        (
            b'{"timestamps": [1767225600], "values": [[true,2,3]]}',
            ["values[0][0]", "'flow'", "not a boolean"],
        ),
        (b'{"timestamps": [1767225600], "values": [[NaN,2,3]]}', ["the body is not valid JSON"]),
        (
            b'{"timestamps": [1767225600], "values": [[1,-Infinity,3]]}',
            ["the body is not valid JSON"],
        ),
        (
            b'{"timestamps": [1767225600], "values": [[1,2,1e400]]}',
            ["the body is not valid JSON", "infinity"],
        ),
        (
            b'{"timestamps": [1767225600, "2026-13-01T00:00:00Z"], "values": [[1,2,3],[1,2,3]]}',
            ["timestamps[1]: '2026-13-01T00:00:00Z' is not an ISO-8601 date-time"],
        ),
        (
            b'{"timestamps": ["yesterday"], "values": [[1,2,3]]}',
            ["timestamps[0]: 'yesterday' is not an ISO-8601"],
        ),
        (
            b'{"timestamps": ["2026-01-01T00:00:00Z", "2201-01-01T00:00:00Z"], '
            b'"values": [[1,2,3],[1,2,3]]}',
            ["timestamps[1]", "1970 to 2200"],
        ),
        (
            b'{"timestamps": ["1969-12-31T23:59:59Z"], "values": [[1,2,3]]}',
            ["timestamps[0]", "1970 to 2200"],
        ),
        (
            b'{"timestamps": [1767225600, -1], "values": [[1,2,3],[1,2,3]]}',
            ["timestamps[1]", "1970 to 2200"],
        ),
        (b'{"timestamps": [1e12], "values": [[1,2,3]]}', ["timestamps[0]", "1970 to 2200"]),
        (
            b'{"timestamps": [99999999999999999999999], "values": [[1,2,3]]}',
            ["timestamps[0]", "1970 to 2200"],
        ),
        (
            b'{"timestamps": [1767225600, true], "values": [[1,2,3],[1,2,3]]}',
            ["timestamps[1]: must be an ISO-8601 string or a number"],
        ),
        (b'{"timestamps": [null], "values": [[1,2,3]]}', ["timestamps[0]"]),
        (b'{"timestamps": [[1]], "values": [[1,2,3]]}', ["timestamps[0]"]),
    ],
)
def test_invalid_json_batches_are_refused_whole(
    client: TestClient,
    series: dict[str, Any],
    admin: Headers,
    sessions: sessionmaker[Session],
    body: bytes,
    fragments: list[str],
) -> None:
    response = post_raw(client, series["id"], body, "application/json", admin)
    assert_problem(response, 422, *fragments)
    assert stored_count(sessions) == 0


HEADER = "timestamp,flow,pressure,temperature\n"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["the CSV body is empty"]),
        ("\n\n", ["the CSV body is empty"]),
        (HEADER, ["has a header but no rows"]),
        (
            "time,flow,pressure,temperature\n1767225600,1,2,3\n",
            ["line 1", "first column must be 'timestamp', not 'time'"],
        ),
        ("timestamp,flow,pressure\n1767225600,1,2\n", ["line 1", "missing 'temperature'"]),
        (
            "timestamp,flow,pressure,temperature,humidity\n1767225600,1,2,3,4\n",
            ["unknown 'humidity'"],
        ),
        ("timestamp,flow,flow,pressure,temperature\n1767225600,1,1,2,3\n", ["repeated 'flow'"]),
        (HEADER + "1767225600,1,2,3\n1767225601,1,2\n", ["line 3: has 3 fields; the header has 4"]),
        (HEADER + "1767225600,1,2,3,4\n", ["line 2: has 5 fields"]),
        (HEADER + "1767225600,1,abc,3\n", ["line 2, column 'pressure': 'abc' is not a number"]),
        (HEADER + "1767225600,1,NaN,3\n", ["line 2, column 'pressure': 'NaN' is not a finite"]),
        (HEADER + "1767225600,1,null,3\n", ["line 2, column 'pressure': 'null' is not a number"]),
        (
            HEADER + "1767225600,1,2,3\n1767225601,nan,2,3\n",
            ["line 3, column 'flow': 'nan' is not a finite number"],
        ),
        (HEADER + "1767225600,1,2,-inf\n", ["line 2, column 'temperature'", "not a finite number"]),
        (
            HEADER + "1767225600,1,2,1e999\n",
            ["line 2, column 'temperature'", "not a finite number"],
        ),
        (
            HEADER + "2026-02-30T00:00:00Z,1,2,3\n",
            ["line 2: '2026-02-30T00:00:00Z' is not an ISO-8601"],
        ),
        (HEADER + "1767225600,1,2,3\n3000-01-01T00:00:00Z,1,2,3\n", ["line 3", "1970 to 2200"]),
        (HEADER + "\n1767225600,1,2,3\n\n\n1767225603,1,x,3\n", ["line 6, column 'pressure': 'x'"]),
        (HEADER + '1767225600,"1\n",2,3\n1767225601,1,2,y\n', ["line 4, column 'temperature'"]),
        (HEADER + '1767225600,1,2,3\n1767225601,"x\ny",2,3\n', ["line 3, column 'flow'"]),
        (HEADER + '1767225600,"1,2,3\n', ["malformed CSV"]),
    ],
)
def test_invalid_csv_batches_are_refused_whole(
    client: TestClient,
    series: dict[str, Any],
    admin: Headers,
    sessions: sessionmaker[Session],
    text: str,
    fragments: list[str],
) -> None:
    response = post_raw(client, series["id"], text.encode(), "text/csv", admin)
    assert_problem(response, 422, *fragments)
    assert stored_count(sessions) == 0


def test_csv_that_is_not_utf8_is_422(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    body = HEADER.encode() + b"1767225600,1,2,\xff\n"
    assert_problem(post_raw(client, series["id"], body, "text/csv", admin), 422, "not UTF-8")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_other_content_types_are_415(
    client: TestClient, series: dict[str, Any], admin: Headers, content_type: str | None
) -> None:
    headers = dict(admin)
    if content_type:
        headers["Content-Type"] = content_type
    body = orjson.dumps({"timestamps": [T0], "values": [ROW]})
    response = client.post(f"/v1/series/{series['id']}/points", content=body, headers=headers)
    assert_problem(response, 415, "application/json", "text/csv")


def test_a_bad_last_row_leaves_earlier_rows_unwritten(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    values: list[Any] = [ROW] * 999 + [[1, 2, "hot"]]
    body = {"timestamps": [T0 + i for i in range(1000)], "values": values}
    assert_problem(post_json(client, series["id"], body, admin), 422, "values[999][2]")
    assert stored_count(sessions) == 0


@pytest.fixture
def small_limits(settings: Settings) -> Iterator[TestClient]:
    """The app with a limit of 3 rows per batch and 2 KiB per body."""
    limited = settings.model_copy(update={"max_points_rows": 3, "max_body_bytes": 2048})
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def test_batches_over_the_row_limit_are_413(
    small_limits: TestClient, make_headers: Callable[..., Headers], sessions: sessionmaker[Session]
) -> None:
    admin = make_headers("admin")
    series = create_series(small_limits, admin)
    body = {"timestamps": [T0 + i for i in range(4)], "values": [ROW] * 4}
    response = post_json(small_limits, series["id"], body, admin)
    assert_problem(response, 413, "4 rows", "the limit is 3 rows per request")
    text = HEADER + "".join(f"{T0 + i},1,2,3\n" for i in range(4))
    response = post_raw(small_limits, series["id"], text, "text/csv", admin)
    assert_problem(response, 413, "more than 3 rows", "the limit is 3 rows")
    three = {"timestamps": [T0 + i for i in range(3)], "values": [ROW] * 3}
    assert post_json(small_limits, series["id"], three, admin).json()["inserted"] == 3
    assert stored_count(sessions) == 3


def test_bodies_over_the_byte_limit_are_413_even_when_streamed(
    small_limits: TestClient, make_headers: Callable[..., Headers], sessions: sessionmaker[Session]
) -> None:
    admin = make_headers("admin")
    series = create_series(small_limits, admin)
    big = orjson.dumps({"timestamps": [T0], "values": [[1.0, 2.0, 3.0 + 1e-9] * 200]})
    assert len(big) > 2048
    response = post_raw(small_limits, series["id"], big, "application/json", admin)
    assert_problem(response, 413, "2048 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    response = small_limits.post(
        f"/v1/series/{series['id']}/points",
        content=chunks(),
        headers={**admin, "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "2048 bytes")
    assert stored_count(sessions) == 0


def test_a_concurrent_writer_in_the_batch_span_falls_back_to_the_upsert(
    client: TestClient,
    series: dict[str, Any],
    admin: Headers,
    sessions: sessionmaker[Session],
    database_url: str,
) -> None:
    """The append fast path (COPY straight into points) meets a row another transaction is
    inserting: once that commits, the batch is upserted instead and counted correctly."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the COPY fast path is Postgres only")
    other = sessions()
    other.execute(
        insert(Point).values(series_id=series["id"], ts=(T0 + 5) * 1_000_000, values=b"\0" * 24)
    )
    committer = threading.Timer(0.5, other.commit)
    committer.start()
    try:
        body = {"timestamps": [T0 + i for i in range(10)], "values": [[i, i, i] for i in range(10)]}
        response = post_json(client, series["id"], body, admin)
    finally:
        committer.join()
        other.close()
    assert response.json() == ingested(10, inserted=9, updated=1)
    stored = read_back(client, series["id"], admin)
    assert stored["values"] == [[i, i, i] for i in range(10)]
