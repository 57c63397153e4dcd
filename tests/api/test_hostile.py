"""Hostile bodies on every write endpoint: each gets a clear 4xx problem document naming what
is wrong, nothing is written, and an oversized body is refused before it is read whole.

Points and score have their own detailed cases (tests/api/test_points.py, test_score.py);
this file covers series, labels, train, activate and PATCH, and what cuts across them all.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Message

from app.config import Settings
from app.errors import PROBLEM_JSON
from app.main import create_app
from tests.fuzz.fuzzing import close_open_jobs, digest
from tests.utils.api_helpers import Headers, assert_problem, create_series, series_body

JSON = "application/json"
SMALL_LIMIT = 64 * 1024

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
"""For cases refused while parsing, before any query: Postgres would add time, not coverage."""


@pytest.fixture
def series(client: TestClient, admin: Headers) -> dict[str, Any]:
    return create_series(client, admin)


@pytest.fixture
def unchanged(sessions: sessionmaker[Session]) -> Iterator[None]:
    """Asserts that the test body left every table as it found it."""
    before = digest(sessions)
    yield
    assert digest(sessions) == before


def label_body(series_id: int, **overrides: Any) -> dict[str, Any]:
    body = {"series_id": series_id, "start": 0, "end": 60, "label": "idle"}
    return {**body, **overrides}


def write_endpoints(series_id: int) -> list[tuple[str, str]]:
    """Every operation that takes a JSON body (points and score also take other types)."""
    return [
        ("POST", "/v1/series"),
        ("PATCH", f"/v1/series/{series_id}"),
        ("POST", f"/v1/series/{series_id}/points"),
        ("POST", "/v1/score"),
        ("POST", "/v1/labels"),
    ]


def send(client: TestClient, method: str, path: str, body: bytes, headers: Headers) -> Any:
    return client.request(method, path, content=body, headers={**headers, "Content-Type": JSON})


# -- bodies no JSON parser should swallow -------------------------------------------------------
UNPARSEABLE = {
    "100k nested arrays": b"[" * 100_000,
    "100k nested objects": b'{"a":' * 100_000,
    "a 5000-digit integer": b'{"series_id": ' + b"9" * 5000 + b"}",
    "bytes that are not UTF-8": b"\xff\xfe{}",
    "a truncated object": b'{"name": "x"',
}


@sqlite_only
def test_unparseable_json_is_a_4xx_on_every_write_endpoint(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    for what, body in UNPARSEABLE.items():
        for method, path in write_endpoints(series["id"]):
            response = send(client, method, path, body, admin)
            where = f"{what} to {method} {path}: {response.text}"
            assert response.status_code in (400, 422), where
            assert response.headers["content-type"] == PROBLEM_JSON, where
            assert "JSON" in response.json()["detail"], where


# -- numbers out of every range ----------------------------------------------------------------
HUGE_INTEGER = b"1" + b"0" * 1000  # 10**1000: valid JSON, readable by Python, no int64


@sqlite_only
def test_huge_and_non_finite_numbers_in_a_new_series_are_named(
    client: TestClient, admin: Headers, unchanged: None
) -> None:
    for field in ("window_size", "stride", "threshold_quantile"):
        for literal in (b"1e400", b"-1e400", b"NaN", b"Infinity", HUGE_INTEGER):
            raw = _with_literal(series_body(), field, literal)
            response = send(client, "POST", "/v1/series", raw, admin)
            problem = assert_problem(response, 422, field)
            assert ["body", field] in [error["loc"] for error in problem["errors"]]


@sqlite_only
def test_huge_and_non_finite_quantiles_in_a_patch_are_named(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    path = f"/v1/series/{series['id']}"
    for literal in (b"1e400", b"NaN", b"-Infinity", HUGE_INTEGER, b"-0.0", b"1"):
        raw = b'{"threshold_quantile": %s}' % literal
        assert_problem(send(client, "PATCH", path, raw, admin), 422, "threshold_quantile")


def test_huge_numbers_in_a_label_are_named(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    cases = [
        (field, literal)
        for field in ("series_id", "start", "end")
        for literal in (b"-1e400", HUGE_INTEGER, b"-" + HUGE_INTEGER, b"1e19")
    ]
    for field, literal in [*cases, ("series_id", b"2147483648")]:
        raw = _with_literal(label_body(series["id"]), field, literal)
        problem = assert_problem(send(client, "POST", "/v1/labels", raw, admin), 422, field)
        assert len(problem["detail"]) < 1000, "the error echoes the whole number"


def _with_literal(body: dict[str, Any], field: str, literal: bytes) -> bytes:
    """`body` as JSON with `field` set to a literal that json.dumps cannot produce."""
    marker = "__literal__"
    text = json.dumps({**body, field: marker}).encode()
    return text.replace(f'"{marker}"'.encode(), literal)


# -- text that no database can store -----------------------------------------------------------
def test_lone_surrogates_in_label_text_are_422(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    # json.loads turns "\ud800" into a str that cannot be encoded as UTF-8: once a 500.
    for field in ("author", "note"):
        for escape in (b"\\ud800", b"\\udfff", b"a\\ud83d"):
            raw = _with_literal(label_body(series["id"]), field, b'"' + escape + b'"')
            response = send(client, "POST", "/v1/labels", raw, admin)
            assert_problem(response, 422, field, "surrogate")


HOSTILE_SERIES_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"name": "pump\u0000"}, "name"),
    ({"name": "pump-\u202e7"}, "name"),
    ({"name": "../../etc/passwd"}, "name"),
    ({"channels": ["flow", "\ud800"]}, "channels"),
    ({"channels": ["flow\u0000"]}, "channels"),
    ({"channels": [f"c{i}" for i in range(10_000)]}, "channels"),
    ({"classes": {"\u0000": "normal"}}, "classes"),
    ({"classes": {f"c{i}": "normal" for i in range(10_000)}}, "classes"),
]


@sqlite_only
def test_hostile_series_fields_are_named(
    client: TestClient, admin: Headers, unchanged: None
) -> None:
    for overrides, field in HOSTILE_SERIES_FIELDS:
        raw = json.dumps(series_body(**overrides)).encode()  # ASCII escapes: surrogates survive
        assert_problem(send(client, "POST", "/v1/series", raw, admin), 422, field)


# -- timestamps out of range -------------------------------------------------------------------
OUT_OF_RANGE = [
    "1969-12-31T23:59:59Z",
    "2201-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999-14:00",
    "+002026-01-01T00:00:00Z",
    -1,
    7_289_654_400,
    1e300,
    "1e300",
    "",
    " ",
]


@sqlite_only
def test_timestamps_out_of_range_are_named_in_labels_and_point_queries(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    for value in OUT_OF_RANGE:
        response = client.post(
            "/v1/labels", json=label_body(series["id"], start=value), headers=admin
        )
        assert_problem(response, 422, "start")
        response = client.get(
            f"/v1/series/{series['id']}/points", params={"end": value}, headers=admin
        )
        assert_problem(response, 422, "end")


# -- content types -----------------------------------------------------------------------------
@sqlite_only
def test_json_endpoints_refuse_other_content_types_with_415(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    bodies = {
        ("POST", "/v1/series"): series_body(name="pump-8"),
        ("PATCH", f"/v1/series/{series['id']}"): {"threshold_quantile": 0.9},
        ("POST", "/v1/labels"): label_body(series["id"]),
        ("POST", "/v1/score"): {"series_id": series["id"], "windows": [[[0.0] * 3] * 8]},
    }
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/csv", None):
        headers = {**admin, **({"Content-Type": content_type} if content_type else {})}
        for (method, path), body in bodies.items():
            if content_type is None and path == "/v1/score":
                continue  # NOTE: /v1/score reads a body without a content type as JSON.
            response = client.request(method, path, content=json.dumps(body), headers=headers)
            assert_problem(response, 415, "application/json")


@sqlite_only
def test_a_json_content_type_with_parameters_is_accepted(
    client: TestClient, admin: Headers, series: dict[str, Any]
) -> None:
    headers = {**admin, "Content-Type": "application/json; charset=utf-8"}
    response = client.post(
        "/v1/labels", content=json.dumps(label_body(series["id"])), headers=headers
    )
    assert response.status_code == 201, response.text


# -- ids and paths -----------------------------------------------------------------------------
def test_ids_out_of_range_are_422_on_every_route(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    # Ids are 32-bit: larger ones once reached SQL and gave 500s (SQLite OverflowError).
    for bad in ("0", "-1", "2147483648", "9" * 40, "1e3", "NaN", "%00", "1.5"):
        for method, path in [
            ("GET", f"/v1/series/{bad}"),
            ("PATCH", f"/v1/series/{bad}"),
            ("POST", f"/v1/series/{bad}/points"),
            ("GET", f"/v1/series/{bad}/points"),
            ("POST", f"/v1/series/{bad}/train"),
            ("GET", f"/v1/series/{bad}/models"),
            ("POST", f"/v1/series/{bad}/models/1/activate"),
            ("POST", f"/v1/series/{series['id']}/models/{bad}/activate"),
            ("GET", f"/v1/jobs/{bad}"),
            ("GET", f"/v1/labels/{bad}"),
            ("DELETE", f"/v1/labels/{bad}"),
            ("GET", f"/v1/labels?series_id={bad}"),
        ]:
            response = client.request(method, path, headers=admin, json={})
            assert response.status_code == 422, f"{method} {path}: {response.text}"
            assert response.headers["content-type"] == PROBLEM_JSON, f"{method} {path}"


def test_train_and_activate_ignore_a_body_and_name_unknown_ids(
    client: TestClient, admin: Headers, series: dict[str, Any], sessions: sessionmaker[Session]
) -> None:
    ingested = client.post(
        f"/v1/series/{series['id']}/points",
        json={"timestamps": list(range(32)), "values": [[0.0, 1.0, 2.0]] * 32},
        headers=admin,
    )
    assert ingested.status_code == 200, ingested.text
    response = client.post(
        f"/v1/series/{series['id']}/train", content=b"[" * 100_000, headers=admin
    )
    assert response.status_code == 202, response.text
    close_open_jobs(sessions)
    response = client.post(f"/v1/series/{series['id']}/models/7/activate", headers=admin)
    assert_problem(response, 404, f"series {series['id']} has no model version 7")
    assert_problem(client.post("/v1/series/999/train", headers=admin), 404, "series 999")
    assert_problem(client.get("/v1/jobs/999", headers=admin), 404, "job 999")


@sqlite_only
def test_malformed_idempotency_keys_are_400(
    client: TestClient, admin: Headers, series: dict[str, Any], unchanged: None
) -> None:
    for key in ("", " ", '""', "x" * 256):
        headers = {**admin, "Idempotency-Key": key}
        for path, body in [
            ("/v1/labels", label_body(series["id"])),
            (f"/v1/series/{series['id']}/train", None),
        ]:
            response = client.post(path, json=body, headers=headers)
            assert_problem(response, 400, "Idempotency-Key")


# -- oversized bodies --------------------------------------------------------------------------
@pytest.fixture
def small_limit(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": SMALL_LIMIT}))) as c:
        yield c


async def _stream(
    app: Any, method: str, path: str, headers: Headers, chunk: bytes, chunks: int
) -> tuple[int, dict[str, str], int]:
    """Send `chunks` chunks to the ASGI app without a Content-Length, as a client streaming a
    body would; returns the status, the headers and how many chunks the app pulled."""
    pulled = 0
    started: dict[str, Any] = {}

    async def receive() -> Message:
        nonlocal pulled
        if pulled == chunks:
            await anyio.sleep_forever()
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.update(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    with anyio.fail_after(30):
        await app(scope, receive, send)
    response_headers = {k.decode(): v.decode() for k, v in started.get("headers", [])}
    return int(started["status"]), response_headers, pulled


STREAMED_TO = [
    ("POST", "/v1/series", {}),
    ("PATCH", "/v1/series/1", {}),
    ("POST", "/v1/labels", {}),
    ("POST", "/v1/labels", {"Idempotency-Key": "big"}),
    ("POST", "/v1/series/1/points", {}),
    ("POST", "/v1/series/1/points", {"Content-Type": "text/csv"}),
    ("POST", "/v1/score", {}),
    ("POST", "/v1/score", {"Content-Type": "application/octet-stream"}),
    ("POST", "/v1/series/1/train", {"Idempotency-Key": "big"}),
]


@sqlite_only
def test_a_streamed_body_over_the_limit_is_413_without_being_read_whole(
    small_limit: TestClient, make_headers: Callable[..., Headers], sessions: sessionmaker[Session]
) -> None:
    admin = make_headers("admin")
    create_series(small_limit, admin)
    before = digest(sessions)
    chunk = b" " * 16 * 1024
    offered = 2048  # 32 MiB without a Content-Length: 512 times the limit
    portal = small_limit.portal
    assert portal is not None
    for method, path, extra in STREAMED_TO:
        headers = {**admin, "Content-Type": JSON, **extra}
        tracemalloc.start()
        try:
            status, response_headers, pulled = portal.call(
                _stream, small_limit.app, method, path, headers, chunk, offered
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        where = f"{method} {path} {extra}"
        assert status == 413, where
        assert response_headers["content-type"] == PROBLEM_JSON, where
        # The app stopped reading one chunk past the limit and never held much more than it.
        assert pulled == SMALL_LIMIT // len(chunk) + 1, where
        assert peak < 4 * SMALL_LIMIT + 1024 * 1024, f"{where}: peak {peak} bytes"
    assert digest(sessions) == before


@sqlite_only
def test_a_declared_length_over_the_limit_is_413_before_anything_is_read(
    small_limit: TestClient, make_headers: Callable[..., Headers]
) -> None:
    admin = make_headers("admin")
    for method, path in [("POST", "/v1/series"), ("POST", "/v1/labels"), ("POST", "/v1/score")]:
        response = small_limit.request(
            method, path, content=b" " * (SMALL_LIMIT + 1), headers={**admin, "Content-Type": JSON}
        )
        assert_problem(response, 413, f"{SMALL_LIMIT} bytes")


# -- series ids of /v1/score ------------------------------------------------------------------
# Found here: both reached SQL and gave 500s, until app/schemas/score_codecs.py bounded them.
def test_a_score_with_a_series_id_beyond_32_bits_is_422(
    client: TestClient, admin: Headers, unchanged: None
) -> None:
    for value in (2**31, 5_490_120_764, 10**30):
        body = {"series_id": value, "windows": [[[0.0] * 3] * 8]}
        assert_problem(client.post("/v1/score", json=body, headers=admin), 422, "series_id")
    for header in ("2147483648", "9" * 30, "0"):
        binary = {
            **admin,
            "Content-Type": "application/octet-stream",
            "X-Vigil-Series-Id": header,
            "X-Vigil-Shape": "1,8,3",
        }
        response = client.post("/v1/score", content=b"\0" * 96, headers=binary)
        assert_problem(response, 422, "X-Vigil-Series-Id")
