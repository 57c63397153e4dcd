"""vigil_client's alarm, stored-score, webhook and series-delete operations against a real
`vigil serve`.

Their server side comes from other branches (detect: alarms and scores; notify: webhooks;
timekeeping: DELETE /v1/series/{id}). Each test skips, saying which path is missing, only
when the server's /openapi.json lacks the operation: after those branches are merged, every
test here must run.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from vigil_client import AsyncClient, Client, Conflict, InvalidInput, NotFound, verify_signature
from vigil_client.models import Alarm, AlarmDetail, Series

from tests.client.conftest import LiveVigil, unique
from tests.utils.stream import make_stream

CHANNELS = ["flow", "pressure", "temperature"]
WINDOW, STRIDE = 16, 8
T0 = datetime(2026, 3, 1, tzinfo=UTC)
HEALTHY = 400


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def require(vigil: Client, method: str, path: str) -> None:
    """Skip unless the server's /openapi.json has `method path` (path parameters by position)."""
    paths = vigil.openapi()["paths"]
    for candidate, operations in paths.items():
        if _shape(candidate) == _shape(path) and method.lower() in operations:
            return
    pytest.skip(
        f"the server's /openapi.json has no {method.upper()} {path}: its branch is not merged "
        "into this one yet"
    )


def stamps(n: int, start: datetime) -> list[datetime]:
    return [start + timedelta(seconds=i) for i in range(n)]


@dataclass
class Plant:
    """A trained series whose later points carry faults, scored through the client."""

    vigil: Client
    series: Series
    next_step: int = HEALTHY
    seed: int = 100

    def fault(self, points: int = 160, fault: tuple[int, int] = (60, 110)) -> None:
        """Ingest `points` more points with a fault, and score their windows (a stored range)."""
        self.seed += 1
        stream = make_stream(points, channels=3, seed=self.seed, faults=[fault])
        start = T0 + timedelta(seconds=self.next_step)
        self.vigil.ingest_points(self.series.id, stamps(points, start), stream.values)
        self.vigil.score_range(
            self.series.id, start=start, end=start + timedelta(seconds=points - 1)
        )
        self.next_step += points


def trained_plant(vigil: Client) -> Plant:
    series = vigil.create_series(
        name=unique("alarming"),
        channels=CHANNELS,
        window_size=WINDOW,
        stride=STRIDE,
        classes={"bearing_wear": "anomaly"},
    )
    healthy = make_stream(HEALTHY, channels=3, seed=4)
    vigil.ingest_points(series.id, stamps(HEALTHY, T0), healthy.values)
    vigil.wait_for_job(vigil.train(series.id).id, timeout=240)
    return Plant(vigil=vigil, series=series)


def wait_for_alarms(vigil: Client, series_id: int, *, at_least: int = 1) -> list[Alarm]:
    deadline = time.monotonic() + 30
    while True:
        alarms = list(vigil.iter_alarms(series_id=series_id))
        if len(alarms) >= at_least or time.monotonic() > deadline:
            return alarms
        time.sleep(0.3)


@pytest.fixture(scope="module")
def alarming(live: LiveVigil) -> Iterator[Plant]:
    with live.client() as vigil:
        require(vigil, "get", "/v1/alarms")
        plant = trained_plant(vigil)
        plant.fault()
        yield plant


# -- alarms --------------------------------------------------------------------------------------


def test_alarms_list_read_verdict_and_acknowledge(alarming: Plant) -> None:
    vigil = alarming.vigil
    require(vigil, "get", "/v1/alarms/{alarm_id}")
    require(vigil, "post", "/v1/alarms/{alarm_id}/verdict")
    require(vigil, "post", "/v1/alarms/{alarm_id}/acknowledge")
    alarms = wait_for_alarms(vigil, alarming.series.id)
    assert alarms, "scoring a clear fault opens an alarm"
    alarm = alarms[0]
    assert alarm.series_id == alarming.series.id
    assert alarm.start >= T0 + timedelta(seconds=HEALTHY)
    assert alarm.status and alarm.model_version == 1
    if alarm.kind == "model" and alarm.peak_score is not None and alarm.threshold is not None:
        assert alarm.peak_score > alarm.threshold
    assert all(0.0 <= c.share <= 1.0 for c in alarm.channels)

    page = vigil.list_alarms(series_id=alarming.series.id, limit=1)
    assert len(page.items) == 1
    paged = [a.id for a in vigil.iter_alarms(series_id=alarming.series.id, page_size=1)]
    assert sorted(map(str, paged)) == sorted(str(a.id) for a in alarms)

    detail = vigil.get_alarm(alarm.id)
    assert isinstance(detail, AlarmDetail) and detail.id == alarm.id
    assert detail.scores, "the alarm's own read lists the scores of its windows"
    assert any(w.is_anomaly for w in detail.scores)
    assert detail.scores[0].start <= alarm.start

    with pytest.raises(InvalidInput) as caught:
        vigil.alarm_verdict(alarm.id, "normal")  # neither false_positive nor an anomaly class
    assert caught.value.field == "label"

    acknowledged = vigil.acknowledge_alarm(alarm.id)
    assert acknowledged.id == alarm.id and acknowledged.acknowledged_at is not None

    judged = vigil.alarm_verdict(alarm.id, "bearing_wear", note="seen on inspection")
    assert judged.alarm.id == alarm.id and judged.alarm.verdict == "bearing_wear"
    assert judged.label_ids, "a verdict labels the alarm's span"
    assert vigil.get_label(judged.label_ids[0]).label == "bearing_wear"
    again = [a for a in vigil.iter_alarms(series_id=alarming.series.id) if a.id == alarm.id]
    assert again and again[0].verdict == "bearing_wear"
    assert again[0].verdict_note == "seen on inspection"

    with pytest.raises(Conflict):  # one verdict per alarm
        vigil.alarm_verdict(alarm.id, "false_positive")
    with pytest.raises(NotFound):
        vigil.get_alarm(10**9)


def test_stored_scores_of_a_series(alarming: Plant) -> None:
    vigil = alarming.vigil
    require(vigil, "get", "/v1/series/{series_id}/scores")
    deadline = time.monotonic() + 30
    while True:
        scores = list(vigil.iter_scores(alarming.series.id, page_size=5))
        if len(scores) >= 19 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(scores) >= 19, "detection on ingest stored the new points' windows"
    assert len({s.start for s in scores}) == len(scores), "no window twice across pages"
    assert [s.start for s in scores] == sorted(s.start for s in scores), "oldest first"
    assert any(s.is_anomaly for s in scores)
    first = vigil.list_scores(alarming.series.id, limit=2)
    assert len(first.items) == 2 and first.next_cursor


def test_watch_alarms_yields_new_alarms_as_they_open(alarming: Plant) -> None:
    vigil = alarming.vigil
    existing = {str(a.id) for a in vigil.iter_alarms(series_id=alarming.series.id)}
    assert existing
    replay = list(
        vigil.watch_alarms(alarming.series.id, poll=0.2, include_existing=True, timeout=0.1)
    )
    assert {str(e.alarm.id) for e in replay} == existing
    assert {e.type for e in replay} == {"opened"}

    trigger = threading.Timer(1.0, alarming.fault)
    trigger.start()
    try:
        events = vigil.watch_alarms(alarming.series.id, poll=0.3, timeout=45)
        first = next(e for e in events if str(e.alarm.id) not in existing)
        events.close()
    finally:
        trigger.join()
    assert first.type == "opened" and first.alarm.series_id == alarming.series.id


def test_the_async_client_reads_and_watches_alarms(live: LiveVigil, alarming: Plant) -> None:
    async def main() -> None:
        async with AsyncClient(live.url, api_key=live.key) as vigil:
            alarms = [a async for a in vigil.iter_alarms(series_id=alarming.series.id)]
            assert alarms and all(a.series_id == alarming.series.id for a in alarms)
            detail = await vigil.get_alarm(alarms[0].id)
            assert detail.id == alarms[0].id and detail.scores
            events = [
                e
                async for e in vigil.watch_alarms(
                    alarming.series.id, poll=0.2, include_existing=True, timeout=0.1
                )
            ]
            assert {e.alarm.id for e in events} == {a.id for a in alarms}
            scores = [s async for s in vigil.iter_scores(alarming.series.id, page_size=7)]
            assert len(scores) >= 19

    asyncio.run(main())


# -- webhooks ------------------------------------------------------------------------------------


@dataclass
class Received:
    body: bytes
    signature: str | None


@dataclass
class Receiver:
    url: str
    got: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append(Received(body, self.headers.get("Vigil-Signature")))
            self.send_response(204)
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(url=f"http://127.0.0.1:{httpd.server_address[1]}/hook", got=got)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_webhooks_receive_signed_alarm_deliveries(live: LiveVigil, receiver: Receiver) -> None:
    with live.client() as vigil:
        require(vigil, "post", "/v1/webhooks")
        require(vigil, "get", "/v1/webhooks/{webhook_id}/deliveries")
        require(vigil, "get", "/v1/alarms")
        secret = "client-test-secret-0123456789"
        hook = vigil.create_webhook(receiver.url, secret=secret, events=["alarm.opened"])
        assert hook.url == receiver.url and (hook.secret_hint or "").endswith(secret[-4:])
        assert vigil.get_webhook(hook.id).events == hook.events
        assert str(hook.id) in {str(h.id) for h in vigil.iter_webhooks()}

        plant = trained_plant(vigil)
        plant.fault()
        deadline = time.monotonic() + 45
        while not receiver.got and time.monotonic() < deadline:
            time.sleep(0.3)
        assert receiver.got, "an opened alarm is delivered to the receiver"
        delivery = receiver.got[0]
        assert verify_signature(secret, delivery.body, delivery.signature)
        assert not verify_signature("another-secret", delivery.body, delivery.signature)
        payload: Any = json.loads(delivery.body)
        assert payload["event"] == "alarm.opened"
        assert payload["data"]["series_id"] == plant.series.id  # the alarm as GET shows it

        deliveries = list(vigil.iter_deliveries(hook.id))
        assert deliveries, "the service lists what it delivered"
        delivered = list(vigil.iter_deliveries(hook.id, status="delivered"))
        assert delivered and all(d.webhook_id == hook.id for d in delivered)

        vigil.delete_webhook(hook.id)
        assert str(hook.id) not in {str(h.id) for h in vigil.iter_webhooks()}


# -- deleting a series ---------------------------------------------------------------------------


def test_delete_series(vigil: Client) -> None:
    require(vigil, "delete", "/v1/series/{series_id}")
    series = vigil.create_series(
        name=unique("doomed"), channels=CHANNELS, window_size=WINDOW, stride=STRIDE
    )
    vigil.ingest_points(series.id, stamps(20, T0), np.ones((20, 3)))
    vigil.delete_series(series.id)
    with pytest.raises(NotFound):
        vigil.get_series(series.id)
    assert series.id not in {s.id for s in vigil.iter_series()}
