"""Big ingestion bodies (issue 12, item 7): they take turns (VIGIL_BULK_CONCURRENCY) and one
that waits too long is refused with 503 "busy, retry"; they are parsed a slice and written a
part at a time, which stores exactly what the whole-body path stores, and answers the same
counts and the same errors. They are spooled to a temporary file as they arrive, never held
whole, and a spooled body gives the same answers as the same bytes in memory.

The slice and part sizes are lowered for the tests, so that small bodies take the big bodies'
path; the turn's threshold is lowered by its setting.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import InvalidInput, VigilError
from app.main import create_app
from app.services import points as points_service
from app.services.points import RawBody, SpooledBody, parse_batch
from tests.utils.api_helpers import CHANNELS, Headers, assert_problem, create_series

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z

SMALL_SLICES = {"BULK_SLICE_BYTES": 64, "WRITE_PART_BYTES": 100}
WHOLE = {"BULK_SLICE_BYTES": 1 << 40, "WRITE_PART_BYTES": 1 << 40}


@contextlib.contextmanager
def sizes(monkeypatch: pytest.MonkeyPatch, values: dict[str, int]) -> Iterator[None]:
    with monkeypatch.context() as patch:
        for name, value in values.items():
            patch.setattr(points_service, name, value)
        yield


@contextlib.contextmanager
def spooled(body: bytes) -> Iterator[SpooledBody]:
    with tempfile.TemporaryFile() as file:
        file.write(body)
        file.flush()
        yield SpooledBody(file)


@pytest.fixture
def one_turn(settings: Settings) -> Iterator[TestClient]:
    """The app with one turn for bodies over 1 KiB, waited for at most 0.2 s."""
    quick = settings.model_copy(
        update={"bulk_concurrency": 1, "bulk_wait_seconds": 0.2, "bulk_min_bytes": 1024}
    )
    with TestClient(create_app(quick)) as test_client:
        yield test_client


def _json_body(start: int, n: int, value: float) -> bytes:
    values: list[list[float | None]] = [[value + start + k, None, -value] for k in range(n)]
    return orjson.dumps({"timestamps": list(range(T0 + start, T0 + start + n)), "values": values})


def test_a_big_body_that_waits_past_its_turn_is_busy_and_writes_nothing(
    one_turn: TestClient, admin: Headers
) -> None:
    series = create_series(one_turn, admin)
    path = f"/v1/series/{series['id']}/points"
    big = _json_body(0, 100, 1.0)
    assert len(big) > 1024
    headers = {**admin, "Content-Type": "application/json"}
    held = contextlib.AsyncExitStack()
    runtime = one_turn.app.state.runtime  # type: ignore[attr-defined]
    # Another big body holds the only turn.
    assert one_turn.portal is not None
    one_turn.portal.call(held.enter_async_context, runtime.bulk.turn(10**9))
    try:
        refused = one_turn.post(path, content=big, headers=headers)
        body = assert_problem(refused, 503, "busy, retry", "VIGIL_BULK_CONCURRENCY")
        assert body["title"] == "Service busy"
        assert refused.headers["retry-after"] == "1"
        # A small body does not take a turn.
        small = one_turn.post(path, content=_json_body(1000, 2, 5.0), headers=headers)
        assert small.status_code == 200, small.text
    finally:
        one_turn.portal.call(held.aclose)
    stored = one_turn.get(path, params={"limit": 1000}, headers=admin).json()
    assert len(stored["timestamps"]) == 2  # the refused body wrote nothing
    again = one_turn.post(path, content=big, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["inserted"] == 100


def _csv_body(start: int, n: int, value: float, *, reorder: bool) -> bytes:
    header = (
        "timestamp,temperature,flow,pressure" if reorder else "timestamp,flow,pressure,temperature"
    )
    lines = [header]
    for k in range(n):
        stamp = f"2026-01-01T00:{(start + k) // 60:02d}:{(start + k) % 60:02d}+00:00"
        flow, temperature = f"{value + start + k}", f"{-value}"
        cells = [temperature, flow, ""] if reorder else [flow, "", temperature]
        lines.append(",".join([stamp, *cells]))
        if k % 7 == 3:
            lines.append("")  # a blank line, skipped
    return ("\r\n".join(lines) + "\r\n").encode()


def _batches() -> list[tuple[str, bytes]]:
    """JSON and CSV, new rows, overlapping rows (some changed), repeated timestamps."""
    repeated = orjson.loads(_json_body(500, 40, 9.0))
    repeated["timestamps"][5] = repeated["timestamps"][6]  # the later row wins
    return [
        ("application/json", _json_body(0, 60, 1.0)),
        ("application/json", _json_body(30, 60, 1.0)),  # 30 unchanged, 30 new
        ("application/json", _json_body(40, 10, 2.0)),  # updated
        ("application/json", orjson.dumps(repeated)),
        ("text/csv", _csv_body(200, 50, 3.0, reorder=False)),
        ("text/csv; charset=utf-8", _csv_body(220, 50, 3.0, reorder=True)),
        ("text/csv", _csv_body(230, 5, 4.0, reorder=True)),
    ]


def _ingest_all(client: TestClient, headers: Headers, name: str) -> tuple[list[Any], Any]:
    series = create_series(client, headers, name=name)
    path = f"/v1/series/{series['id']}/points"
    answers = []
    for content_type, body in _batches():
        response = client.post(
            path, content=body, headers={**headers, "Content-Type": content_type}
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    stored = client.get(path, params={"limit": 10_000}, headers=headers).json()
    return answers, stored


def test_sliced_parse_and_parted_write_store_what_the_whole_body_path_stores(
    client: TestClient, admin: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sizes(monkeypatch, WHOLE):
        whole_answers, whole_stored = _ingest_all(client, admin, "whole")
    with sizes(monkeypatch, SMALL_SLICES):
        sliced_answers, sliced_stored = _ingest_all(client, admin, "sliced")
    assert sliced_answers == whole_answers
    assert sliced_stored == whole_stored
    assert [a["inserted"] for a in sliced_answers[:3]] == [60, 30, 0]
    assert sliced_answers[1]["unchanged"] == 30
    assert sliced_answers[2]["updated"] == 10
    assert sliced_answers[3]["received"] == 40
    assert sliced_answers[3]["inserted"] == 39
    assert any(v is None for row in sliced_stored["values"] for v in row)


@pytest.mark.parametrize("kind", ["json", "json-values-first", "json-indented", "csv"])
def test_the_slices_take_valid_bodies_without_falling_back(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sliced parsers themselves give the whole-body batch (not None: no fallback)."""
    if kind.startswith("json"):
        body = _json_body(0, 50, 1.0)
        if kind == "json-values-first":
            payload = orjson.loads(body)
            body = orjson.dumps({"values": payload["values"], "timestamps": payload["timestamps"]})
        elif kind == "json-indented":
            body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
        whole = points_service.parse_json_batch(body, channels=CHANNELS, max_rows=1000)
        in_slices = points_service._json_batch_in_slices
    else:
        body = _csv_body(0, 50, 1.0, reorder=True)
        whole = points_service.parse_csv_batch(body, channels=CHANNELS, max_rows=1000)
        in_slices = points_service._csv_batch_in_slices
    with sizes(monkeypatch, SMALL_SLICES), spooled(body) as in_file:
        for raw in (body, in_file):
            sliced = in_slices(raw, channels=CHANNELS, max_rows=1000)
            assert sliced is not None
            np.testing.assert_array_equal(sliced.ts, whole.ts)
            np.testing.assert_array_equal(sliced.values, whole.values)  # NaN equal to NaN
            assert sliced.naive_timestamps == whole.naive_timestamps


def _bad_bodies() -> list[tuple[str, bytes]]:
    good = orjson.loads(_json_body(0, 30, 1.0))

    def variant(**changes: Any) -> bytes:
        return orjson.dumps({**good, **changes})

    rows = good["values"]
    csv_lines = _csv_body(0, 30, 1.0, reorder=False).decode().split("\r\n")
    return [
        ("json", variant(values=[*rows[:20], [1.0, 2.0], *rows[21:]])),
        ("json", variant(values=[*rows[:25], [1.0, True, 2.0], *rows[26:]])),
        ("json", variant(values=[*rows[:25], [1.0, "2", 2.0], *rows[26:]])),
        ("json", variant(values=[*rows[:25], [[1.0], 2.0, 3.0], *rows[26:]])),
        ("json", variant(values=rows[:-1])),
        ("json", variant(values=[*rows, [1.0, 2.0, 3.0]])),
        ("json", variant(timestamps=[*good["timestamps"][:-1], "yesterday"])),
        ("json", variant(extra=1)),
        ("json", orjson.dumps({"values": rows, "timestamps": good["timestamps"]})[:-1]),
        (
            "json",
            orjson.dumps({"timestamps": good["timestamps"], "values": rows}).replace(
                b"]]}", b"],]}"
            ),
        ),
        (
            "json",
            variant(values=[*rows[:25], [12345.5, 1.0, 1.0], *rows[26:]]).replace(
                b"12345.5", b"1e400"
            ),
        ),
        ("json", _json_body(0, 30, 1.0) + b'{"values": [[1, 2, 3]]}'),
        ("json", orjson.dumps({"values": rows, "timestamps": good["timestamps"]})),  # valid
        ("json", orjson.dumps(good, option=orjson.OPT_INDENT_2)),  # valid
        ("json", _json_body(0, 30, 1.0).replace(b'"values"', b'"valu\\u0065s"')),  # valid
        ("json", _json_body(0, 30, 1.0)[:-1] + b',"valu\\u0065s":[]}'),  # the last one wins
        (
            "csv",
            "\r\n".join(
                [*csv_lines[:20], "2026-01-01T00:09:00+00:00,1,2", *csv_lines[20:]]
            ).encode(),
        ),
        (
            "csv",
            "\r\n".join(
                [*csv_lines[:20], "2026-01-01T00:09:00+00:00,1,NaN,2", *csv_lines[20:]]
            ).encode(),
        ),
        ("csv", "\r\n".join([*csv_lines[:20], "tomorrow,1,2,3", *csv_lines[20:]]).encode()),
        (
            "csv",
            "\r\n".join(
                [*csv_lines[:20], "2026-01-01T00:09:00+00:00,1,1_0,2", *csv_lines[20:]]
            ).encode(),
        ),
        (
            "csv",
            "\r\n".join(
                [*csv_lines[:20], "2026-01-01T00:09:00+00:00,1,inf,2", *csv_lines[20:]]
            ).encode(),
        ),
        (
            "csv",
            "\r\n".join(
                [*csv_lines[:20], '2026-01-01T00:09:00+00:00,1,"2\n",3', *csv_lines[20:]]
            ).encode(),
        ),
    ]


def _outcome(body: RawBody, kind: str) -> object:
    content_type = "application/json" if kind == "json" else "text/csv"
    try:
        batch = parse_batch(body=body, content_type=content_type, channels=CHANNELS, max_rows=40)
    except VigilError as exc:
        return (type(exc).__name__, str(exc), getattr(exc, "field", None))
    return ("ok", batch.ts.tolist(), np.nan_to_num(batch.values, nan=-1e300).tolist())


@pytest.mark.parametrize(("kind", "body"), _bad_bodies())
def test_odd_and_bad_big_bodies_get_the_whole_body_paths_answers(
    kind: str, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sizes(monkeypatch, WHOLE):
        whole = _outcome(body, kind)
    with sizes(monkeypatch, SMALL_SLICES):
        sliced = _outcome(body, kind)
        with spooled(body) as in_file:
            from_file = _outcome(in_file, kind)
    assert sliced == whole
    assert from_file == whole


def test_an_invalid_input_names_its_row_in_a_sliced_body(monkeypatch: pytest.MonkeyPatch) -> None:
    good = orjson.loads(_json_body(0, 30, 1.0))
    good["values"][27][1] = "x"
    with sizes(monkeypatch, SMALL_SLICES), pytest.raises(InvalidInput) as raised:
        parse_batch(
            body=orjson.dumps(good), content_type="application/json", channels=CHANNELS, max_rows=40
        )
    assert raised.value.field == "values[27][1]"


def test_a_spooled_body_reads_like_the_bytes_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """find, rfind, count and slices of a spooled body, across the cuts of its reads."""
    rng = random.Random(7)
    body = bytes(rng.choice(b'ab]\n"') for _ in range(20_000))
    monkeypatch.setattr(points_service, "SCAN_BYTES", 8192)
    with spooled(body) as in_file:
        assert len(in_file) == len(body)
        assert in_file[:] == body
        for _ in range(300):
            start = rng.randrange(-100, len(body) + 100)
            end = rng.choice([None, rng.randrange(-100, len(body) + 100)])
            assert in_file[start:end] == body[start:end]
            for sub in (b"]", b"\n", b"ab]", b'"a"b'):
                assert in_file.find(sub, start, end) == body.find(sub, start, end), sub
                assert in_file.rfind(sub, start, end) == body.rfind(sub, start, end), sub
            assert in_file.count(b"\n", start, end) == body.count(b"\n", start, end)
        assert in_file.find(b"abababababab") == body.find(b"abababababab") == -1


@contextlib.contextmanager
def watched_spooling(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """Small slices, and a record of the temporary files, writes and reads of big bodies."""
    seen: dict[str, list[Any]] = {"files": [], "writes": [], "reads": []}
    opened = tempfile.TemporaryFile
    read = SpooledBody.__getitem__

    class WatchedFile:
        def __init__(self) -> None:
            self.file = opened()
            seen["files"].append(self.file)

        def writelines(self, parts: list[bytes]) -> None:
            seen["writes"].append(sum(len(part) for part in parts))
            self.file.writelines(parts)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.file, name)

    def reading(self: SpooledBody, key: slice) -> bytes:
        out = read(self, key)
        seen["reads"].append(len(out))
        return out

    with monkeypatch.context() as patch:
        for name, value in {"BULK_SLICE_BYTES": 1024, "WRITE_PART_BYTES": 2048}.items():
            patch.setattr(points_service, name, value)
        patch.setattr(points_service, "SCAN_BYTES", 4096)
        patch.setattr(tempfile, "TemporaryFile", WatchedFile)
        patch.setattr(SpooledBody, "__getitem__", reading)
        yield seen


CHUNK = 500


def post(client: TestClient, path: str, body: bytes, headers: Headers, *, chunked: bool) -> Any:
    """POST the body whole with its Content-Length, or in chunks of `CHUNK` bytes without one,
    each its own ASGI message (the test client would join them)."""
    if not chunked:
        return client.post(path, content=body, headers=headers)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), CHUNK):
            yield body[start : start + CHUNK]

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.post(path, content=pieces(), headers=headers)

    assert client.portal is not None  # the app's own event loop, where its runtime lives
    return client.portal.call(send)


def _long_json_body(n: int) -> bytes:
    """Rows of long numbers, so that the rows are most of the body (the rest is read whole)."""
    return _json_body(0, n, 0.123456789012)


@pytest.mark.parametrize("kind", ["json", "csv"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_big_body_is_spooled_and_read_a_slice_at_a_time(
    kind: str,
    declared: bool,
    client: TestClient,
    admin: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    series = create_series(client, admin)
    path = f"/v1/series/{series['id']}/points"
    if kind == "json":
        body, content_type = _long_json_body(600), "application/json"
    else:
        body, content_type = _csv_body(0, 600, 0.123456789012, reorder=True), "text/csv"
    headers = {**admin, "Content-Type": content_type}
    with watched_spooling(monkeypatch) as seen:
        response = post(client, path, body, headers, chunked=not declared)
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == 600
    assert len(seen["files"]) == 1
    assert seen["files"][0].closed  # and so deleted
    assert sum(seen["writes"]) == len(body)
    # Held in memory at most a part at a time (plus one received chunk), read a slice at a
    # time: never the whole body.
    largest_chunk = len(body) if declared else CHUNK
    assert max(seen["writes"]) < 2048 + largest_chunk
    assert max(seen["reads"]) < len(body) / 4, (max(seen["reads"]), len(body))
    stored = client.get(path, params={"limit": 1000}, headers=admin).json()
    assert len(stored["timestamps"]) == 600
    assert stored["values"][599][:2] == [pytest.approx(0.123456789012 + 599), None]


def test_a_spooled_body_past_the_size_limit_is_413_and_writes_nothing(
    settings: Settings, admin: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_limit = settings.model_copy(update={"max_body_bytes": 8192, "bulk_min_bytes": 1024})
    body = _long_json_body(400)
    assert len(body) > 2 * 8192
    with TestClient(create_app(small_limit)) as client:
        series = create_series(client, admin)
        path = f"/v1/series/{series['id']}/points"
        headers = {**admin, "Content-Type": "application/json"}
        with watched_spooling(monkeypatch) as seen:
            refused = post(client, path, body, headers, chunked=True)
            assert_problem(refused, 413, "exceeds the limit of 8192 bytes")
            assert len(seen["files"]) == 1  # spooled until the limit was passed
            assert seen["files"][0].closed
            assert 0 < sum(seen["writes"]) <= 8192
            declared = post(client, path, body, headers, chunked=False)
            assert_problem(declared, 413, "exceeds the limit of 8192 bytes")
            assert len(seen["files"]) == 1  # refused before it was read
        stored = client.get(path, headers=admin).json()
        assert stored["timestamps"] == []
        fits = post(client, path, _long_json_body(100), headers, chunked=True)
        assert fits.status_code == 200, fits.text


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_bad_row_in_a_late_slice_of_a_spooled_body_is_named_and_writes_nothing(
    declared: bool, client: TestClient, admin: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = create_series(client, admin)
    path = f"/v1/series/{series['id']}/points"
    good = orjson.loads(_long_json_body(600))
    good["values"][590][1] = "x"
    lines = _csv_body(0, 600, 1.0, reorder=False).decode().split("\r\n")
    bad_line = [i for i, line in enumerate(lines) if line][-3]  # its line number is one more
    lines[bad_line] = lines[bad_line].rsplit(",", 1)[0] + ",1e400"
    bodies = [
        ("application/json", orjson.dumps(good), "values[590][1]", "not a string"),
        ("text/csv", "\r\n".join(lines).encode(), f"line {bad_line + 1}", "not a finite number"),
    ]
    with watched_spooling(monkeypatch) as seen:
        for content_type, body, named, why in bodies:
            headers = {**admin, "Content-Type": content_type}
            refused = post(client, path, body, headers, chunked=not declared)
            assert_problem(refused, 422, named, why)
    assert len(seen["files"]) == 2
    assert all(file.closed for file in seen["files"])
    stored = client.get(path, headers=admin).json()
    assert stored["timestamps"] == []
