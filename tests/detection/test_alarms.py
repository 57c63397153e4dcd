"""Alarms: flagged windows merged into events, closed when quiet, verdicts and paging."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Alarm, Job, Label, WindowScore
from app.detection.alarms import KIND_MODEL, is_closed, merge_flags, streams_of
from tests.detection.conftest import TRAINED, Headers, Setup, add_closed_alarms, send, settled
from tests.utils.stream import Stream, create_series, make_stream

FAULTS = [(480, 504), (560, 584)]


# -- the rule on its own -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "gap", "expected"),
    [
        ("", 2, []),
        ("1", 2, [(0, 0)]),
        ("111", 0, [(0, 2)]),
        ("101", 0, [(0, 0), (2, 2)]),
        ("101", 1, [(0, 2)]),
        ("1001", 2, [(0, 3)]),
        ("10001", 2, [(0, 0), (4, 4)]),
        ("0110010001110000001", 2, [(1, 5), (9, 11), (18, 18)]),
        ("1100000011", 5, [(0, 1), (8, 9)]),
        ("1100000011", 6, [(0, 9)]),
    ],
)
def test_merge_flags(flags: str, gap: int, expected: list[tuple[int, int]]) -> None:
    positions = [i for i, flag in enumerate(flags) if flag == "1"]
    assert merge_flags(positions, gap=gap) == expected
    # Order and repeats do not matter.
    assert merge_flags(reversed(positions + positions), gap=gap) == expected


@pytest.mark.parametrize(
    ("last", "newest", "gap", "close_after", "closed"),
    [
        (10, 10, 2, 3, False),
        (10, 12, 2, 3, False),
        (10, 13, 2, 3, True),
        (10, 13, 4, 3, False),  # never before the merge gap has passed
        (10, 15, 4, 3, True),
        (10, 14, 0, 5, False),
        (10, 15, 0, 5, True),
    ],
)
def test_close_after(last: int, newest: int, gap: int, close_after: int, closed: bool) -> None:
    settings = Settings(alarm_close_after=close_after)
    assert is_closed(last=last, newest=newest, gap=gap, settings=settings) is closed


# -- through the detector ----------------------------------------------------------------------
def _alarms(setup: Setup, **params: Any) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = setup.client.get(f"/v1/alarms?limit=1000&{query}", headers=setup.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    alarms: list[dict[str, Any]] = body["alarms"]
    return alarms


def _overlaps(alarm: dict[str, Any], stream: Stream, lo: int, hi: int) -> bool:
    from datetime import datetime

    start = datetime.fromisoformat(alarm["start"]).timestamp() * 1e6
    end = datetime.fromisoformat(alarm["end"]).timestamp() * 1e6
    return bool(start <= stream.ts[hi - 1] and end >= stream.ts[lo])


def _model_episodes(setup: Setup, gap: int) -> list[tuple[int, int]]:
    with setup.sessions() as session:
        rows = session.scalars(
            select(WindowScore).where(WindowScore.series_id == setup.series_id)
        ).all()
    return merge_flags([r.seq for r in rows if (KIND_MODEL, None) in streams_of(r)], gap=gap)


def _seqs(setup: Setup, kind: str) -> list[tuple[int, int]]:
    with setup.sessions() as session:
        rows = session.execute(
            select(Alarm.first_seq, Alarm.last_seq)
            .where(Alarm.series_id == setup.series_id, Alarm.kind == kind, Alarm.check.is_(None))
            .order_by(Alarm.first_seq)
        ).all()
    return [(int(a), int(b)) for a, b in rows]


def test_faults_open_alarms_that_close_when_quiet(setup: Setup) -> None:
    stream = make_stream(800, faults=FAULTS, seed=3)
    # Up to just after the first fault: its alarm is open.
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:520],
        stream.values[TRAINED:520],
    )
    settled(setup.sessions, setup.series_id)
    open_now = [
        a for a in _alarms(setup) if a["kind"] == "model" and _overlaps(a, stream, *FAULTS[0])
    ]
    assert len(open_now) == 1
    assert open_now[0]["status"] == "open"
    assert open_now[0]["windows"] >= 2
    assert open_now[0]["peak_score"] > open_now[0]["threshold"]
    assert open_now[0]["start"].endswith("Z") and open_now[0]["end"].endswith("Z")
    # The rest: the first alarm went quiet and closed; the second fault has its own alarm.
    send(setup.client, setup.headers, setup.series_id, stream.ts[520:700], stream.values[520:700])
    settled(setup.sessions, setup.series_id)
    alarms = _alarms(setup)
    model = [a for a in alarms if a["kind"] == "model"]
    for fault in FAULTS:
        hits = [a for a in model if _overlaps(a, stream, *fault)]
        assert len(hits) == 1, (fault, model)
        assert hits[0]["status"] == "closed"
        assert hits[0]["check"] is None
        shares = [c["share"] for c in hits[0]["channels"]]
        assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-3
    # The faults are far out of the training range: data-quality alarms name the check.
    quality = [a for a in alarms if a["kind"] == "data_quality"]
    assert any(a["check"] == "out_of_range" and _overlaps(a, stream, *FAULTS[0]) for a in quality)
    # What the detector kept step by step is what the rule gives on all stored windows.
    assert _seqs(setup, "model") == _model_episodes(setup, gap=2)


def test_the_merge_gap_is_a_series_setting(setup: Setup, admin: Headers) -> None:
    patched = setup.client.patch(
        f"/v1/series/{setup.series_id}", json={"alarm_merge_gap": 12}, headers=admin
    )
    assert patched.status_code == 200 and patched.json()["alarm_merge_gap"] == 12
    stream = make_stream(800, faults=FAULTS, seed=3)
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:700],
        stream.values[TRAINED:700],
    )
    settled(setup.sessions, setup.series_id)
    model = [a for a in _alarms(setup) if a["kind"] == "model"]
    both = [a for a in model if all(_overlaps(a, stream, *f) for f in FAULTS)]
    assert len(both) == 1
    assert _seqs(setup, "model") == _model_episodes(setup, gap=12)


def test_data_quality_alarms_name_the_check_and_the_channel(setup: Setup) -> None:
    stream = make_stream(800, seed=3)
    values = stream.values.copy()
    values[480:520, 0] = 0.25  # c0 frozen
    values[600:610, 2] = 40.0  # c2 far out of range
    send(setup.client, setup.headers, setup.series_id, stream.ts[TRAINED:700], values[TRAINED:700])
    settled(setup.sessions, setup.series_id)
    quality = [a for a in _alarms(setup) if a["kind"] == "data_quality"]
    stuck = [a for a in quality if a["check"] == "stuck"]
    assert len(stuck) == 1 and _overlaps(stuck[0], stream, 480, 520)
    assert stuck[0]["channels"] == [{"name": "c0", "share": 1.0}]
    out = [a for a in quality if a["check"] == "out_of_range"]
    assert len(out) == 1 and _overlaps(out[0], stream, 600, 610)
    assert out[0]["channels"] == [{"name": "c2", "share": 1.0}]
    detail = setup.client.get(f"/v1/alarms/{out[0]['id']}", headers=setup.headers).json()
    assert len(detail["scores"]) >= out[0]["windows"]
    flagged = [w for w in detail["scores"] if w["data_quality"]]
    assert {"check": "out_of_range", "channel": "c2"} in flagged[0]["data_quality"]


def _one_alarm(setup: Setup) -> dict[str, Any]:
    stream = make_stream(800, faults=FAULTS[:1], seed=3)
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:600],
        stream.values[TRAINED:600],
    )
    settled(setup.sessions, setup.series_id)
    model = [a for a in _alarms(setup) if a["kind"] == "model" and _overlaps(a, stream, *FAULTS[0])]
    assert len(model) == 1
    return model[0]


def test_a_false_positive_verdict_labels_the_span_and_arms_a_retrain(setup: Setup) -> None:
    alarm = _one_alarm(setup)
    url = f"/v1/alarms/{alarm['id']}/verdict"
    given = setup.client.post(
        url, json={"label": "false_positive", "note": "cleaning"}, headers=setup.headers
    )
    assert given.status_code == 200, given.text
    body = given.json()
    assert body["alarm"]["status"] == "dismissed"
    assert body["alarm"]["verdict"] == "false_positive"
    assert body["alarm"]["verdict_by"].startswith("operator (vgl_")
    assert body["retrain"] is not None and body["retrain"]["status"] == "queued"
    [label_id] = body["label_ids"]
    label = setup.client.get(f"/v1/labels/{label_id}", headers=setup.headers).json()
    assert label["label"] == "false_positive"
    assert (label["start"], label["end"]) == (alarm["start"], alarm["end"])
    assert label["author"] == body["alarm"]["verdict_by"]
    assert label["note"] == "cleaning"
    assert label["retrain"]["job_id"] == body["retrain"]["job_id"]
    with setup.sessions() as session:
        job = session.get(Job, body["retrain"]["job_id"])
        assert job is not None and job.reason == "labels" and job.not_before is not None
        stored = session.get(Alarm, alarm["id"])
        assert stored is not None and stored.label_ids == [label_id]
    # A verdict is final.
    again = setup.client.post(url, json={"label": "anomaly"}, headers=setup.headers)
    assert again.status_code == 409
    read = setup.client.get(f"/v1/alarms/{alarm['id']}", headers=setup.headers).json()
    assert read["status"] == "dismissed" and read["retrain_job_id"] == body["retrain"]["job_id"]
    assert _alarms(setup, status="dismissed")[0]["id"] == alarm["id"]


def test_a_confirming_verdict_and_bad_verdicts(setup: Setup, admin: Headers) -> None:
    setup.client.patch(
        f"/v1/series/{setup.series_id}",
        json={"classes": {"bearing": "anomaly", "idle": "normal"}},
        headers=admin,
    )
    alarm = _one_alarm(setup)
    url = f"/v1/alarms/{alarm['id']}/verdict"
    for bad in ("idle", "normal", "false_negative", "no_such_class"):
        refused = setup.client.post(url, json={"label": bad}, headers=setup.headers)
        assert refused.status_code == 422, (bad, refused.text)
        assert "label" in refused.text
    for body in ({}, {"label": 3}, {"label": "bearing", "extra": 1}):
        assert setup.client.post(url, json=body, headers=setup.headers).status_code == 422
    assert (
        setup.client.post(
            "/v1/alarms/999999/verdict", json={"label": "bearing"}, headers=setup.headers
        ).status_code
        == 404
    )
    assert (
        setup.client.post(
            "/v1/alarms/0/verdict", json={"label": "bearing"}, headers=setup.headers
        ).status_code
        == 422
    )
    with setup.sessions() as session:
        assert session.scalars(select(Label)).all() == []  # nothing half-written
    confirmed = setup.client.post(url, json={"label": "bearing"}, headers=setup.headers)
    assert confirmed.status_code == 200
    assert confirmed.json()["alarm"]["status"] == "confirmed"
    # Another key cannot give a second verdict either.
    reader = setup.client.post(url, json={"label": "bearing"}, headers=admin | {})
    assert reader.status_code == 409


def test_acknowledge(setup: Setup, make_headers: Callable[..., Headers]) -> None:
    alarm = _one_alarm(setup)
    url = f"/v1/alarms/{alarm['id']}/acknowledge"
    assert setup.client.post(url, headers=make_headers("read")).status_code == 403
    acked = setup.client.post(url, headers=setup.headers)
    assert acked.status_code == 200
    body = acked.json()
    assert body["status"] == "acknowledged"
    assert body["acknowledged_by"].startswith("operator (vgl_")
    assert body["acknowledged_at"].endswith("Z")
    again = setup.client.post(url, headers=setup.headers).json()
    assert again["acknowledged_at"] == body["acknowledged_at"]
    assert (
        setup.client.post("/v1/alarms/424242/acknowledge", headers=setup.headers).status_code == 404
    )


def test_keys_restricted_to_a_series_see_only_its_alarms(
    setup: Setup, sessions: Any, make_headers: Callable[..., Headers]
) -> None:
    from app.db.models import ApiKey

    alarm = _one_alarm(setup)
    other = create_series(sessions, name="other")
    with sessions() as session, session.begin():
        session.add(
            Alarm(
                series_id=other,
                kind="model",
                status="open",
                first_seq=1,
                last_seq=1,
                start_ts=1,
                end_ts=2,
                windows=1,
                peak_score=9.0,
                threshold=1.0,
                model_version=1,
                channels=[],
                opened_at=utcnow(),
            )
        )
    headers = make_headers("read", "label", name="restricted")
    with sessions() as session, session.begin():
        key = session.scalars(select(ApiKey).where(ApiKey.name == "restricted")).one()
        key.series_ids = [other]
    seen = setup.client.get("/v1/alarms", headers=headers).json()["alarms"]
    assert [a["series_id"] for a in seen] == [other]
    assert setup.client.get(f"/v1/alarms/{alarm['id']}", headers=headers).status_code == 403
    assert (
        setup.client.get(f"/v1/alarms?series_id={setup.series_id}", headers=headers).status_code
        == 403
    )
    assert (
        setup.client.post(f"/v1/alarms/{alarm['id']}/acknowledge", headers=headers).status_code
        == 403
    )
    assert (
        setup.client.get(f"/v1/series/{setup.series_id}/scores", headers=headers).status_code == 403
    )
    everyone = setup.client.get("/v1/alarms", headers=setup.headers).json()["alarms"]
    assert {a["series_id"] for a in everyone} == {setup.series_id, other}


def test_paging_walks_every_alarm_once_and_exports_csv(setup: Setup, sessions: Any) -> None:
    add_closed_alarms(sessions, setup.series_id, 23)
    seen: list[int] = []
    cursor = ""
    pages = 0
    while True:
        page = setup.client.get(f"/v1/alarms?limit=5&cursor={cursor}", headers=setup.headers).json()
        seen += [a["id"] for a in page["alarms"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert pages == 5 and len(seen) == 23 == len(set(seen))
    assert seen == sorted(seen, reverse=True)
    for bad in ("nonsense", "WzEsMl0", "eyJhIjoxfQ", "WyJ4Il0"):
        refused = setup.client.get(f"/v1/alarms?cursor={bad}", headers=setup.headers)
        assert refused.status_code == 422 and "cursor" in refused.text, bad
    assert setup.client.get("/v1/alarms?status=sleeping", headers=setup.headers).status_code == 422
    assert setup.client.get("/v1/alarms?since=yesterday", headers=setup.headers).status_code == 422
    assert setup.client.get("/v1/alarms?series_id=9999", headers=setup.headers).status_code == 404
    window = setup.client.get(
        "/v1/alarms?since=2026-01-01T00:00:05Z&until=2026-01-01T00:00:07Z", headers=setup.headers
    ).json()["alarms"]
    assert len(window) == 4  # alarms 4..7 overlap [5 s, 7 s]

    exported = setup.client.get(
        "/v1/alarms?limit=10", headers=setup.headers | {"Accept": "text/csv"}
    )
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 10 and rows[0]["top_channel"] == "c1" and float(rows[0]["top_share"]) == 0.7
    assert exported.headers["vigil-next-cursor"]


def test_scores_page_and_export_csv(setup: Setup, stream: Stream) -> None:
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:600],
        stream.values[TRAINED:600],
    )
    settled(setup.sessions, setup.series_id)
    url = f"/v1/series/{setup.series_id}/scores"
    seen: list[str] = []
    cursor = ""
    while True:
        page = setup.client.get(f"{url}?limit=7&cursor={cursor}", headers=setup.headers).json()
        seen += [w["start"] for w in page["scores"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 25 and seen == sorted(seen)
    exported = setup.client.get(url + "?limit=1000", headers=setup.headers | {"Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["start"] for r in rows] == seen
    assert {"contribution_c0", "contribution_c1", "contribution_c2", "adjusted_score"} <= set(
        rows[0]
    )
    assert all(np.isfinite(float(r["adjusted_score"])) for r in rows)
    bounded = setup.client.get(
        f"{url}?start={seen[3]}&end=2026-01-01T00:09:00Z", headers=setup.headers
    ).json()
    assert bounded["scores"][0]["start"] == seen[3]
    assert setup.client.get(f"{url}?cursor=bad", headers=setup.headers).status_code == 422
    assert setup.client.get("/v1/series/9999/scores", headers=setup.headers).status_code == 404
