"""Detection on ingest: windows scored without /v1/score, once, again when they change."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import WindowScore
from app.main import create_app
from tests.detection.conftest import TRAINED, Setup, send, settled, stored_count, wait_for
from tests.utils.stream import Stream, make_stream
from tests.utils.trained import trained_series

T, STRIDE = 16, 8


def _rows(setup: Setup) -> list[WindowScore]:
    with setup.sessions() as session:
        return list(
            session.scalars(
                select(WindowScore)
                .where(WindowScore.series_id == setup.series_id)
                .order_by(WindowScore.start_ts)
            )
        )


def test_ingested_windows_are_scored_within_the_lag(setup: Setup, stream: Stream) -> None:
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:600],
        stream.values[TRAINED:600],
    )
    # The grid of the whole series (as training cuts it): windows every 8 points from the
    # first point; the first scored one is the first that holds an ingested point.
    first = -(-(TRAINED - T + 1) // STRIDE) * STRIDE
    expected = list(range(first, 600 - T + 1, STRIDE))
    lag = wait_for(lambda: stored_count(setup.sessions, setup.series_id) == len(expected), 5.0)
    assert lag < setup.settings.detect_lag_seconds
    rows = _rows(setup)
    assert [r.start_ts for r in rows] == [int(stream.ts[i]) for i in expected]
    assert [r.end_ts for r in rows] == [int(stream.ts[i + T - 1]) for i in expected]
    assert [r.seq for r in rows] == [i // STRIDE for i in expected]
    assert all(r.model_version == 1 and r.threshold > 0 for r in rows)
    assert all(len(r.contributions) == 3 for r in rows)
    # Normal data: few windows flagged.
    assert sum(r.is_anomaly for r in rows) <= 3

    # The stored scores are what /v1/score says about the same windows.
    body = setup.client.get(
        f"/v1/series/{setup.series_id}/scores?limit=1000", headers=setup.headers
    ).json()
    assert len(body["scores"]) == len(expected) and body["next_cursor"] is None
    assert body["scores"][0]["start"].endswith("Z")


def test_reingest_does_not_duplicate_and_a_change_rescores(setup: Setup, stream: Stream) -> None:
    ts, values = stream.ts[TRAINED:600], stream.values[TRAINED:600]
    send(setup.client, setup.headers, setup.series_id, ts, values)
    settled(setup.sessions, setup.series_id)
    before = {r.start_ts: r for r in _rows(setup)}
    assert len(before) > 0

    again = send(setup.client, setup.headers, setup.series_id, ts, values)
    assert again["unchanged"] == len(ts)
    settled(setup.sessions, setup.series_id)
    same = {r.start_ts: r for r in _rows(setup)}
    assert same.keys() == before.keys()
    assert all(same[k].scored_at == before[k].scored_at for k in same)

    # One point changes: exactly the windows that hold it are scored again.
    changed = values[100:101] + 5.0
    send(setup.client, setup.headers, setup.series_id, ts[100:101], changed)
    settled(setup.sessions, setup.series_id)
    after = {r.start_ts: r for r in _rows(setup)}
    assert after.keys() == before.keys()
    moved = sorted(k for k in after if after[k].scored_at != before[k].scored_at)
    index = TRAINED + 100
    holding = [int(stream.ts[s]) for s in range(0, 800, STRIDE) if s <= index < s + T]
    assert moved == holding
    for k in moved:
        assert after[k].digest != before[k].digest
        assert after[k].raw_score != before[k].raw_score


def test_appending_in_small_batches_continues_the_grid(setup: Setup, stream: Stream) -> None:
    for lo in range(TRAINED, 560, 7):  # batches that do not fall on window boundaries
        hi = min(lo + 7, 560)
        send(setup.client, setup.headers, setup.series_id, stream.ts[lo:hi], stream.values[lo:hi])
    settled(setup.sessions, setup.series_id)
    first = -(-(TRAINED - T + 1) // STRIDE) * STRIDE
    expected = [int(stream.ts[i]) for i in range(first, 560 - T + 1, STRIDE)]
    assert [r.start_ts for r in _rows(setup)] == expected


def test_back_filled_history_is_scored_on_the_same_grid(setup: Setup, stream: Stream) -> None:
    # Points after the trained ones, with a hole [480, 523) that is filled in afterwards.
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:480],
        stream.values[TRAINED:480],
    )
    send(setup.client, setup.headers, setup.series_id, stream.ts[523:600], stream.values[523:600])
    settled(setup.sessions, setup.series_id)
    send(setup.client, setup.headers, setup.series_id, stream.ts[480:523], stream.values[480:523])
    settled(setup.sessions, setup.series_id)
    first = -(-(TRAINED - T + 1) // STRIDE) * STRIDE
    expected = [int(stream.ts[i]) for i in range(first, 600 - T + 1, STRIDE)]
    rows = _rows(setup)
    assert [r.start_ts for r in rows] == expected
    assert [r.seq for r in rows] == [i // STRIDE for i in range(first, 600 - T + 1, STRIDE)]
    # Every stored window holds exactly the points now stored at its place.
    for r in rows:
        i = int(np.searchsorted(stream.ts, r.start_ts))
        assert r.end_ts == int(stream.ts[i + T - 1])


def test_detection_can_be_turned_off(setup: Setup, stream: Stream, admin: dict[str, str]) -> None:
    url = f"/v1/series/{setup.series_id}"
    off = setup.client.patch(url, json={"detect": False}, headers=admin)
    assert off.status_code == 200, off.text
    assert off.json()["detect"] is False
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:500],
        stream.values[TRAINED:500],
    )
    settled(setup.sessions, setup.series_id)
    assert stored_count(setup.sessions, setup.series_id) == 0
    on = setup.client.patch(url, json={"detect": True}, headers=admin)
    assert on.json()["detect"] is True
    send(setup.client, setup.headers, setup.series_id, stream.ts[500:600], stream.values[500:600])
    settled(setup.sessions, setup.series_id)
    # Windows ingested while detection was off are not scored later; the new ones are,
    # on the grid, including the window that spans both.
    rows = _rows(setup)
    first = -(-(500 - T + 1) // STRIDE) * STRIDE
    assert [r.start_ts for r in rows] == [
        int(stream.ts[i]) for i in range(first, 600 - T + 1, STRIDE)
    ]


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_windows_and_alarms_not_calls(setup: Setup) -> None:
    from tests.utils.stream import make_stream

    stream = make_stream(800, faults=[(480, 504)], seed=3)
    series = "pump-1"
    new = _sample("vigil_detect_windows_total", series=series, result="new")
    flagged = _sample("vigil_detect_flagged_windows_total", series=series)
    opened = _sample("vigil_alarms_opened_total", series=series, kind="model")
    lags = _sample("vigil_detect_lag_seconds_count")
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:600],
        stream.values[TRAINED:600],
    )
    settled(setup.sessions, setup.series_id)
    rows = _rows(setup)
    assert _sample("vigil_detect_windows_total", series=series, result="new") - new == len(rows)
    flagged_now = _sample("vigil_detect_flagged_windows_total", series=series)
    assert flagged_now - flagged == sum(r.is_anomaly for r in rows) > 0
    assert _sample("vigil_alarms_opened_total", series=series, kind="model") > opened
    assert _sample("vigil_detect_lag_seconds_count") > lags
    # A flagged window whose value changes but stays flagged is scored again, not counted again.
    fault_row = next(r for r in rows if r.is_anomaly and r.start_ts >= int(stream.ts[488]))
    i = int(np.searchsorted(stream.ts, fault_row.start_ts)) + 4
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[i : i + 1],
        stream.values[i : i + 1] + 0.5,
    )
    settled(setup.sessions, setup.series_id)
    assert _sample("vigil_detect_windows_total", series=series, result="rescored") > 0
    assert _sample("vigil_detect_flagged_windows_total", series=series) == flagged_now
    exposed = setup.client.get("/metrics").text
    assert 'vigil_open_alarms{series="pump-1"}' in exposed or "vigil_open_alarms" in exposed


def test_detector_threads_share_many_series_without_scoring_a_window_twice(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_headers: Callable[..., dict[str, str]],
) -> None:
    """Three detector threads, four series streaming at once: every window of every series
    is stored exactly once, on its series' grid."""
    many = settings.model_copy(update={"detect_threads": 3})
    series = [trained_series(sessions, many, name=f"pump-{i}", n_points=TRAINED) for i in range(4)]
    stream = make_stream(600, seed=3)
    headers = make_headers("ingest", "read", name="gateway")
    with TestClient(create_app(many)) as client:
        detectors = client.app.state.runtime.detector.detectors  # type: ignore[attr-defined]
        assert len({d.name for d in detectors}) == 3
        for lo in range(TRAINED, 600, 40):  # the series take turns, batch by batch
            for series_id, _ in series:
                send(
                    client, headers, series_id, stream.ts[lo : lo + 40], stream.values[lo : lo + 40]
                )
        first = -(-(TRAINED - T + 1) // STRIDE) * STRIDE
        expected = [i // STRIDE for i in range(first, 600 - T + 1, STRIDE)]
        for series_id, _ in series:
            wait_for(lambda sid=series_id: stored_count(sessions, sid) >= len(expected), 20.0)
            settled(sessions, series_id)
        with sessions() as session:
            for series_id, _ in series:
                seqs = session.scalars(
                    select(WindowScore.seq)
                    .where(WindowScore.series_id == series_id)
                    .order_by(WindowScore.seq)
                ).all()
                assert list(seqs) == expected
