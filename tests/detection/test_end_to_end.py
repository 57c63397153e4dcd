"""Detection as a service end to end, through the HTTP API and without one /v1/score call:
ingest, train, stream more points with a fault and a benign episode, see alarms open within
the lag on the right intervals with the right top channel, give verdicts, receive the signed
webhooks of all that on a real local HTTP receiver, and see the retrain those verdicts queued
suppress a later occurrence of the benign episode.

Built to hold by construction: the fault is a level shift of 3 (the signal's amplitude is 1)
on one channel; the benign episode (a cleaning cycle, say) swings another channel 2.2 times
as wide as the first model ever saw, so it alarms for sure. The cycle recurs as it was (the
same values on that channel, in the same phase of the signal), so after the retrain it is
both in the training data and labelled false_positive: the windows wholly inside it score
far lower (usually they are dismissed outright). Windows that straddle its edges also hold
normal points nobody marked, so for them the test only asks for a clearly weaker alarm, if
any. Every assertion compares against the alarm threshold.

Checked beyond the parameters below: at 8 seeds (3-19, one thread, SQLite) the recurrence kept
0.00-0.18 of the dismissed alarm's peak, the edges at most 0.51, and all passed; before the
training's denoising criterion (models/train.py) 4 of the 8 failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import ScoreRecord
from app.detection.webhooks import Deliverer
from app.main import create_app
from app.training.worker import Worker
from tests.detection.test_webhooks import SECRET, verify
from tests.utils.receiver import Receiver, receiver
from tests.utils.stream import make_stream

pytestmark = pytest.mark.slow

Headers = dict[str, str]
CHANNELS = ["vib", "temp", "amps"]
FAULT = (1800, 1840)  # temp shifted up by 3
BENIGN = [(2112, 2192), (2624, 2704)]  # amps swings 2.2 times as wide; the first gets marked
# Both start and end where amps crosses zero (every 16 points), 512 points (16 periods) apart:
# the later episode is the same event as the marked one, and no window holds a jump.
BATCH = 50


def _stream(seed: int) -> tuple[np.ndarray, np.ndarray]:
    stream = make_stream(2800, seed=seed)
    values = stream.values.copy()
    rng = np.random.default_rng(seed + 1)
    lo, hi = FAULT
    values[lo:hi, 1] += 3.0 + 0.3 * rng.standard_normal(hi - lo)
    (lo, hi), (again, _) = BENIGN
    values[lo:hi, 2] *= 2.2
    values[again : again + hi - lo, 2] = values[lo:hi, 2]  # the same cycle, recorded again
    return stream.ts, values


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1_000_000)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("seed", "threads"), [(7, 1), (11, 2), (7, 2), (11, 1)])
def test_detection_end_to_end(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_headers: Callable[..., Headers],
    seed: int,
    threads: int,
) -> None:
    settings = settings.model_copy(
        update={
            "train_min_steps": 600,
            "train_max_steps": 3000,
            "train_patience": 10,
            "train_members": 3,
            "train_threads": threads,
            "score_threads": threads,
            "activation_tolerance": 1.0,
            "retrain_quiet_seconds": 0.0,
            # NOTE: under SCHED_IDLE a machine busy with other work would starve training.
            "train_sched_idle": False,
        }
    )
    worker = Worker(settings, sessions=sessions)
    ops = make_headers("ingest", "label", "train", "read", name="night-shift")
    admin = make_headers("admin", name="plant-admin")
    stop = threading.Event()
    deliverer = Deliverer(settings, sessions=sessions, name="e2e-deliverer")
    ts, values = _stream(seed)

    def send(lo: int, hi: int) -> float:
        response = client.post(
            f"/v1/series/{series_id}/points",
            json={"timestamps": (ts[lo:hi] / 1e6).tolist(), "values": values[lo:hi].tolist()},
            headers=ops,
        )
        assert response.status_code == 200, response.text
        return time.monotonic()

    def model_alarms() -> list[dict[str, Any]]:
        body = client.get(f"/v1/alarms?series_id={series_id}&limit=1000", headers=ops).json()
        return [a for a in body["alarms"] if a["kind"] == "model"]

    def overlapping(span: tuple[int, int]) -> list[dict[str, Any]]:
        lo, hi = int(ts[span[0]]), int(ts[span[1] - 1])
        return [a for a in model_alarms() if _us(a["start"]) <= hi and _us(a["end"]) >= lo]

    def caught_up(end: int) -> None:
        """Wait until the window that ends with point `end` - 1 is scored."""
        last = (end - 16) // 8 * 8  # the last window the points complete
        url = f"/v1/series/{series_id}/scores?start={ts[last] / 1e6}"
        deadline = time.monotonic() + settings.detect_lag_seconds
        while not client.get(url, headers=ops).json()["scores"]:
            assert time.monotonic() < deadline, f"point {end} not scored in time"
            time.sleep(0.05)

    def stream_until(end: int, span: tuple[int, int]) -> float:
        """Send points in batches up to `end`; the seconds from the batch that completed the
        first window wholly inside the span to the span's alarm."""
        inside = -(-span[0] // 8) * 8 + 16  # points that complete that window
        lag = None
        for lo in range(cursor[0], end, BATCH):
            committed = send(lo, min(lo + BATCH, end))
            if lag is None and lo + BATCH >= inside:
                deadline = committed + settings.detect_lag_seconds
                while not overlapping(span) and time.monotonic() < deadline:
                    time.sleep(0.02)
                lag = time.monotonic() - committed
        cursor[0] = end
        caught_up(end)
        assert lag is not None
        assert overlapping(span), f"no alarm on {span} within {settings.detect_lag_seconds} s"
        return lag

    with TestClient(create_app(settings)) as client, receiver() as hooks:
        hook = client.post(
            "/v1/webhooks",
            json={
                "url": hooks.url,
                "secret": SECRET,
                "events": ["alarm.opened", "alarm.closed", "alarm.verdict", "model.activated"],
            },
            headers=admin,
        )
        assert hook.status_code == 201, hook.text
        deliverer.start(stop)  # as every worker does beside its jobs
        created = client.post(
            "/v1/series",
            json={
                "name": "pump-live",
                "channels": CHANNELS,
                "window_size": 16,
                "stride": 8,
                "classes": {"bearing_wear": "anomaly"},
            },
            headers=ops,
        )
        assert created.status_code == 201, created.text
        series_id = created.json()["id"]
        for lo in range(0, 1600, 400):
            send(lo, lo + 400)
        job = client.post(f"/v1/series/{series_id}/train", headers=ops)
        assert job.status_code == 202, job.text
        assert worker.run_once() == job.json()["job_id"]
        assert (
            client.get(f"/v1/series/{series_id}/models", headers=ops).json()["active_version"] == 1
        )
        assert model_alarms() == []  # history before the first model is not scored

        cursor = [1600]
        lag = stream_until(1900, FAULT)
        assert lag < settings.detect_lag_seconds
        [fault] = overlapping(FAULT)
        assert fault["channels"][0]["name"] == "temp"
        assert fault["channels"][0]["share"] > 0.5
        assert fault["peak_score"] > 2 * fault["threshold"]
        stream_until(2400, BENIGN[0])
        [benign] = overlapping(BENIGN[0])
        assert benign["channels"][0]["name"] == "amps"
        assert benign["peak_score"] > 2 * benign["threshold"]
        ratio_before = benign["peak_score"] / benign["threshold"]
        # Normal stretches raise few model alarms.
        others = [a for a in model_alarms() if a["id"] not in (fault["id"], benign["id"])]
        assert len(others) <= 3, others
        done = {a["id"]: a["status"] for a in model_alarms()}
        assert done[fault["id"]] == done[benign["id"]] == "closed"

        confirmed = client.post(
            f"/v1/alarms/{fault['id']}/verdict", json={"label": "bearing_wear"}, headers=ops
        ).json()
        dismissed = client.post(
            f"/v1/alarms/{benign['id']}/verdict",
            json={"label": "false_positive", "note": "cleaning cycle"},
            headers=ops,
        ).json()
        assert confirmed["alarm"]["status"] == "confirmed"
        assert dismissed["alarm"]["status"] == "dismissed"
        assert dismissed["alarm"]["verdict_by"].startswith("night-shift (")
        retrain = dismissed["retrain"]["job_id"]
        assert confirmed["retrain"]["job_id"] == retrain  # one debounced retrain for both
        assert worker.run_once() == retrain
        finished = client.get(f"/v1/jobs/{retrain}", headers=ops).json()
        assert finished["status"] == "succeeded", finished
        assert finished["metrics"]["labelled_windows"] > 0
        versions = client.get(f"/v1/series/{series_id}/models", headers=ops).json()
        assert versions["active_version"] == 2, versions["versions"][-1]
        assert (
            client.get(f"/v1/series/{series_id}/models", headers=ops).json()["active_version"] == 2
        )

        # The benign episode comes back: scored by version 2, it alarms far less, if at all.
        for lo in range(2400, 2800, BATCH):
            send(lo, lo + BATCH)
        caught_up(2800)
        later = client.get(
            f"/v1/series/{series_id}/scores?start={ts[2584] / 1e6}&end={ts[2744] / 1e6}",
            headers=ops,
        ).json()["scores"]
        assert later and {w["model_version"] for w in later} == {2}
        # Windows wholly inside the episode score far lower (π knows the cycle; for most seeds
        # they are dismissed outright, for some they still come near the threshold).
        lo, hi = int(ts[BENIGN[1][0]]), int(ts[BENIGN[1][1] - 1])
        core = [w for w in later if _us(w["start"]) >= lo and _us(w["end"]) <= hi]
        assert len(core) >= 5
        peak_after = max(w["adjusted_score"] / w["threshold"] for w in core)
        assert peak_after < 0.5 * ratio_before
        # Windows that straddle its edges hold normal points the operator never marked; an
        # alarm there, if any, is far weaker than the dismissed one.
        again = overlapping(BENIGN[1])
        assert all(a["peak_score"] / a["threshold"] < 0.6 * ratio_before for a in again)
        _check_webhooks(hooks, series_id, fault["id"], benign["id"])
        stop.set()
        deliverer.join(timeout=10)
        print(
            f"seed {seed} threads {threads}: lag {lag:.2f} s, benign peak/threshold "
            f"{ratio_before:.2f} -> {peak_after:.2f}, "
            f"fault {fault['peak_score'] / fault['threshold']:.2f}"
        )

    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ScoreRecord)) == 0  # no /v1/score


def _check_webhooks(hooks: Receiver, series_id: int, fault: int, benign: int) -> None:
    """Every event of the story reached the receiver, signed (checked as the README tells
    receivers to), each delivery once, with its idempotency id in header and body."""
    wanted = {
        ("model.activated", 1),
        ("model.activated", 2),
        ("alarm.opened", fault),
        ("alarm.opened", benign),
        ("alarm.closed", fault),
        ("alarm.closed", benign),
        ("alarm.verdict", fault),
        ("alarm.verdict", benign),
    }
    deadline = time.monotonic() + 30
    seen: set[tuple[str, int]] = set()
    while not wanted <= seen:
        assert time.monotonic() < deadline, f"webhooks missing: {sorted(wanted - seen)}"
        seen = set()
        for request in list(hooks.received):
            payload = verify(SECRET, request)
            assert request.headers["vigil-delivery"] == payload["id"]
            assert request.headers["vigil-event"] == payload["event"]
            data = payload["data"]
            assert data["series_id"] == series_id
            key = data["version"] if payload["event"] == "model.activated" else data["id"]
            seen.add((payload["event"], key))
        time.sleep(0.1)
    ids = [request.headers["vigil-delivery"] for request in hooks.received]
    assert len(ids) == len(set(ids)), "a delivery was sent twice"
