"""Retries against a real local HTTP server that answers 503/429 with `Retry-After` first, and
the webhook signature helper. No Vigil here: the server plays exactly the answers under test."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from vigil_client import (
    AsyncClient,
    Client,
    RateLimited,
    Retry,
    ServiceUnavailable,
    TransportError,
    sign,
    verify_signature,
)
from vigil_client._retry import retry_after_seconds

JOB = {
    "id": 7,
    "job_id": 7,
    "series_id": 1,
    "status": "queued",
    "reason": "manual",
    "not_before": None,
    "progress": 0.0,
    "error": None,
    "model_version": None,
    "metrics": None,
    "attempts": 0,
    "created_at": "2026-12-04T10:00:00Z",
    "started_at": None,
    "finished_at": None,
}


@dataclass
class Seen:
    method: str
    path: str
    idempotency_key: str | None
    at: float


@dataclass
class Script:
    """What the server answers, in order: (status, headers, body); the last one repeats."""

    answers: list[tuple[int, dict[str, str], object]]
    seen: list[Seen] = field(default_factory=list)
    drop_first: int = 0  # close the connection without answering this many times first


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        script = self.server.script  # type: ignore[attr-defined]
        script.seen.append(
            Seen(self.command, self.path, self.headers.get("Idempotency-Key"), time.monotonic())
        )
        if script.drop_first > 0:
            script.drop_first -= 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        index = min(len(script.seen) - 1, len(script.answers) - 1)
        status, headers, body = script.answers[index]
        payload = json.dumps(body).encode()
        self.send_response(status)
        content_type = "application/json" if status < 400 else "application/problem+json"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script(answers=[])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.script = script  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def unavailable(retry_after: str) -> tuple[int, dict[str, str], object]:
    problem = {"title": "Service unavailable", "status": 503, "detail": "the database is away"}
    return 503, {"Retry-After": retry_after}, problem


def test_a_503_with_retry_after_is_waited_out_with_the_same_idempotency_key(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.answers = [unavailable("1"), unavailable("1"), (202, {}, JOB)]
    started = time.monotonic()
    with Client(url, api_key="k") as vigil:
        job = vigil.train(1)
    assert job.id == 7 and job.status == "queued"
    assert [s.path for s in script.seen] == ["/v1/series/1/train"] * 3
    keys = {s.idempotency_key for s in script.seen}
    assert len(keys) == 1 and None not in keys, "one Idempotency-Key for every attempt"
    gaps = [b.at - a.at for a, b in zip(script.seen, script.seen[1:], strict=False)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # Retry-After: 1, each time
    assert time.monotonic() - started < 10


def test_every_post_gets_a_key_and_a_given_key_is_sent_as_given(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.answers = [
        unavailable("0"),
        (200, {}, {"received": 1, "inserted": 1, "updated": 0, "unchanged": 0, "warnings": []}),
    ]
    with Client(url, api_key="k") as vigil:
        vigil.ingest_points(1, [0], [[1.0]])
        script.seen.clear()
        script.answers = [unavailable("0"), (202, {}, JOB)]
        vigil.train(1, idempotency_key="mine-1")
    assert [s.idempotency_key for s in script.seen] == ["mine-1", "mine-1"]


def test_an_http_date_retry_after_is_honoured(server: tuple[str, Script]) -> None:
    url, script = server
    when = datetime.now(UTC) + timedelta(seconds=2)
    script.answers = [
        (429, {"Retry-After": format_datetime(when, usegmt=True)}, {"title": "Too many"}),
        (200, {}, JOB),
    ]
    with Client(url, api_key="k") as vigil:
        assert vigil.get_job(7).id == 7
    gap = script.seen[1].at - script.seen[0].at
    assert gap >= 0.9, gap  # the date has one-second resolution
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("Thu, 01 Jan 2026 00:00:05 GMT", now=now) == 5.0
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("soon") is None


def test_attempts_are_bounded_and_the_last_answer_is_raised(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [unavailable("0")]
    with (
        Client(url, api_key="k", retry=Retry(attempts=3)) as vigil,
        pytest.raises(ServiceUnavailable) as caught,
    ):
        vigil.train(1)
    assert len(script.seen) == 3
    assert caught.value.attempts == 3 and caught.value.retry_after == "0"
    assert caught.value.detail == "the database is away"


def test_a_retry_after_beyond_the_cap_is_raised_at_once(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(429, {"Retry-After": "3600"}, {"title": "Too many requests"})]
    with Client(url, api_key="k", retry=Retry(max_retry_after=30)) as vigil:
        started = time.monotonic()
        with pytest.raises(RateLimited) as caught:
            vigil.get_job(7)
    assert time.monotonic() - started < 2 and len(script.seen) == 1
    assert caught.value.retry_after == "3600"


def test_a_broken_connection_is_retried_for_safe_requests_only(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(202, {}, JOB)]
    script.drop_first = 1
    fast = Retry(attempts=3, backoff=0.05)
    with Client(url, api_key="k", retry=fast) as vigil:
        assert vigil.train(1).id == 7  # carries an Idempotency-Key: replayed
        assert (
            len(script.seen) == 2
            and script.seen[0].idempotency_key == script.seen[1].idempotency_key
        )
        script.seen.clear()
        script.drop_first = 1
        with pytest.raises(TransportError):  # creating a series twice would conflict
            vigil.create_series(name="x", channels=["a"], window_size=2, stride=1)
        assert len(script.seen) == 1


def test_nothing_listening_is_a_transport_error_after_the_attempts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again at once: nothing listens there
    with (
        Client(f"http://127.0.0.1:{port}", retry=Retry(attempts=2, backoff=0.01)) as vigil,
        pytest.raises(TransportError) as caught,
    ):
        vigil.health()
    assert caught.value.attempts == 2


def test_the_async_client_retries_alike(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [unavailable("1"), (202, {}, JOB)]

    async def main() -> None:
        async with AsyncClient(url, api_key="k") as vigil:
            assert (await vigil.train(1)).id == 7

    asyncio.run(main())
    assert len(script.seen) == 2
    assert script.seen[0].idempotency_key == script.seen[1].idempotency_key is not None
    assert script.seen[1].at - script.seen[0].at >= 0.95


# -- webhook signatures -------------------------------------------------------------------------


def test_verify_signature() -> None:
    body = b'{"event":"alarm.opened","alarm":{"id":1}}'
    stamp = 1_796_000_000
    digest = hmac.new(b"s3cret", f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={stamp},v1={digest}"
    assert sign("s3cret", body, stamp) == header
    assert verify_signature("s3cret", body, header, now=stamp + 10)
    assert verify_signature(b"s3cret", body.decode(), header, now=stamp - 10)
    assert not verify_signature("other", body, header, now=stamp)
    assert not verify_signature("s3cret", body + b" ", header, now=stamp)
    assert not verify_signature("s3cret", body, header, now=stamp + 301), "too old"
    assert verify_signature("s3cret", body, header, tolerance=None, now=stamp + 10**6)
    rotated = f"t={stamp},v1={'0' * 64},v1={digest}"
    assert verify_signature("s3cret", body, rotated, now=stamp)
    for bad in (None, "", "v1=" + digest, f"t=soon,v1={digest}", f"t={stamp}"):
        assert not verify_signature("s3cret", body, bad, now=stamp)
