"""Structured logs: one JSON object per line with the request id and job context."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.logs import JsonFormatter
from tests.utils.stream import create_series, insert_points, make_stream
from tests.utils.trained import train_now


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line]


def test_job_logs_carry_job_series_and_version(
    json_lines: io.StringIO, sessions: sessionmaker[Session], settings: Settings
) -> None:
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(300))
    job_id = train_now(sessions, settings, series_id)
    records = _records(json_lines)
    done = [r for r in records if r["msg"] == f"job {job_id} succeeded: version 1"]
    assert len(done) == 1
    assert done[0]["level"] == "info"
    assert done[0]["job_id"] == job_id
    assert done[0]["series_id"] == series_id
    assert done[0]["model_version"] == 1
    assert isinstance(done[0]["ts"], str) and done[0]["ts"].endswith("+00:00")


def test_request_logs_carry_the_request_id(
    json_lines: io.StringIO, client: TestClient, admin: dict[str, str]
) -> None:
    logger = logging.getLogger("tests.request")

    @client.app.get("/_log_probe")  # type: ignore[attr-defined,misc]
    def probe() -> dict[str, str]:
        logger.info("inside a request")
        return {}

    response = client.get("/_log_probe", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    inside = [r for r in _records(json_lines) if r["msg"] == "inside a request"]
    assert inside and inside[0]["request_id"] == "abc-123"


def test_a_worker_failure_is_logged_with_its_job(
    json_lines: io.StringIO, sessions: sessionmaker[Session], settings: Settings
) -> None:
    series_id = create_series(sessions, name="short")
    insert_points(sessions, series_id, make_stream(10))
    job_id = train_now(sessions, settings, series_id)
    failed = [
        r for r in _records(json_lines) if r["level"] == "warning" and r.get("job_id") == job_id
    ]
    assert failed and "ingest more points" in str(failed[0]["msg"])
