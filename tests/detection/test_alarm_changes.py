"""Alarms as already-scored windows are scored again: split, merge, withdrawn, verdicts kept,
history back-filled into a hole, and a verdict racing the detector.

Most tests fold hand-written window scores with `update_alarms` itself (no model): a string
of flags is a run of windows, `1` flagged by the model, `0` not, `.` not stored.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Alarm, Label, Series, WindowScore
from app.detection.alarms import give_verdict, update_alarms
from app.detection.events import EVENTS
from app.runtime import Principal
from tests.detection.conftest import TRAINED, Setup, send, settled, wait_for
from tests.detection.test_alarms import _model_episodes
from tests.detection.test_webhooks import add_webhook, deliveries
from tests.utils.stream import T0_US, create_series, make_stream

STRIDE_US = 8_000_000  # the windows' stride: 8 points, one a second
OPERATOR = Principal(id=0, name="operator", key_hash="", scopes=("label",))


# -- folding hand-written windows --------------------------------------------------------------
@pytest.fixture
def series_id(sessions: sessionmaker[Session]) -> int:
    series = create_series(sessions)  # alarm_merge_gap 2: up to 2 unflagged windows in one
    add_webhook(sessions, "http://127.0.0.1:9/hook", EVENTS)  # to read the events it queues
    return series


def score(sessions: sessionmaker[Session], series_id: int, flags: str) -> list[Alarm]:
    """Store (or score again) window k of the grid as `flags[k]` says, fold the windows
    written into the alarms as the detector does, and return the series' alarms by start."""
    with sessions() as session, session.begin():
        series = session.get(Series, series_id)
        assert series is not None
        stored = {
            row.seq: row
            for row in session.scalars(
                select(WindowScore).where(WindowScore.series_id == series_id)
            )
        }
        changed = []
        for seq, flag in enumerate(flags):
            if flag == ".":
                continue
            row = stored.get(seq)
            if row is None:
                start = T0_US + seq * STRIDE_US
                row = WindowScore(series_id=series_id, start_ts=start, end_ts=start + 15_000_000)
                session.add(row)
            row.seq = seq
            row.digest = b"-"
            row.model_version = 1
            row.raw_score = row.score = row.adjusted_score = 2.0 + seq if flag == "1" else 0.1
            row.threshold = 1.0
            row.is_anomaly = flag == "1"
            row.quality = []
            row.contributions = [0.5, 0.5, 0.0]
            changed.append(row)
        session.flush()
        newest = max(seq for seq, flag in enumerate(flags) if flag != ".")
        newest = max([newest, *stored])
        update_alarms(
            session=session,
            series=series,
            changed=changed,
            newest_seq=newest,
            settings=Settings(alarm_close_after=3),
        )
    return alarms_of(sessions, series_id)


def alarms_of(sessions: sessionmaker[Session], series_id: int) -> list[Alarm]:
    with sessions() as session:
        return list(
            session.scalars(
                select(Alarm).where(Alarm.series_id == series_id).order_by(Alarm.first_seq)
            )
        )


def spans(alarms: list[Alarm]) -> list[tuple[int, int, int]]:
    """(first_seq, last_seq, windows) of each alarm."""
    return [(a.first_seq, a.last_seq, a.windows) for a in alarms]


def events(sessions: sessionmaker[Session]) -> list[tuple[str, dict[str, Any]]]:
    """Every event queued so far, oldest first, then forgotten (the next call sees new ones)."""
    found = [(d.event, orjson.loads(d.body)["data"]) for d in deliveries(sessions)]
    with sessions() as session, session.begin():
        session.execute(text("DELETE FROM webhook_deliveries"))
    return found


def set_alarm(sessions: sessionmaker[Session], alarm_id: int, **values: Any) -> None:
    with sessions() as session, session.begin():
        alarm = session.get(Alarm, alarm_id)
        assert alarm is not None
        for name, value in values.items():
            setattr(alarm, name, value)


def test_windows_that_raise_nothing_change_nothing(
    sessions: sessionmaker[Session], series_id: int
) -> None:
    assert score(sessions, series_id, "0000") == []
    [alarm] = score(sessions, series_id, "..........1")
    [same] = score(sessions, series_id, "00000")  # 6 unflagged windows away
    assert (same.id, spans([same])) == (alarm.id, [(10, 10, 1)])
    assert [e for e, _ in events(sessions)] == ["alarm.opened"]


def test_an_alarm_splits_where_its_middle_is_no_longer_flagged(
    sessions: sessionmaker[Session], series_id: int
) -> None:
    [alarm] = score(sessions, series_id, "1111111111111")
    assert spans([alarm]) == [(0, 12, 13)]
    set_alarm(sessions, alarm.id, acknowledged_at=utcnow(), acknowledged_by="ops")
    events(sessions)
    # Windows 5..8 are scored again, unflagged: 4 > alarm_merge_gap apart.
    earlier, later = score(sessions, series_id, ".....0000....")
    assert spans([earlier, later]) == [(0, 4, 5), (9, 12, 4)]
    assert earlier.id == alarm.id and later.id > alarm.id
    assert earlier.acknowledged_by == "ops" and later.acknowledged_at is None
    assert (earlier.start_ts, earlier.end_ts) == (T0_US, T0_US + 4 * STRIDE_US + 15_000_000)
    assert later.start_ts == T0_US + 9 * STRIDE_US
    assert earlier.peak_score == 6.0 and later.peak_score == 14.0
    # The later part is a new alarm, announced; the earlier part went quiet 8 windows ago.
    assert [(e, d["id"]) for e, d in events(sessions)] == [
        ("alarm.opened", later.id),
        ("alarm.closed", earlier.id),
    ]
    assert earlier.status == "acknowledged" and later.status == "open"
    # A gap the rule allows does not split: window 10 alone (1 unflagged window).
    assert spans(score(sessions, series_id, "..........0..")) == [(0, 4, 5), (9, 12, 3)]
    assert events(sessions) == []


def test_a_window_that_bridges_two_alarms_merges_them_into_the_older(
    sessions: sessionmaker[Session], series_id: int
) -> None:
    [older] = score(sessions, series_id, "......111")
    # History back-filled before it: a separate alarm (3 unflagged windows apart), younger.
    younger, _ = score(sessions, series_id, "111000")
    assert younger.id > older.id
    assert spans(alarms_of(sessions, series_id)) == [(0, 2, 3), (6, 8, 3)]
    events(sessions)
    # Window 4 is flagged after all: 2 and 1 unflagged windows from the two alarms.
    [merged] = score(sessions, series_id, "....1")
    assert merged.id == older.id
    assert spans([merged]) == [(0, 8, 7)]
    assert (merged.start_ts, merged.end_ts) == (T0_US, T0_US + 8 * STRIDE_US + 15_000_000)
    assert merged.status == "open" and merged.peak_score == 10.0
    [(event, data)] = events(sessions)
    assert event == "alarm.closed"
    assert data["id"] == younger.id
    assert (data["removed"], data["merged_into"]) == ("merged", older.id)
    assert data["status"] == "closed" and data["closed_at"] is not None


def test_an_alarm_that_loses_every_flagged_window_is_withdrawn(
    sessions: sessionmaker[Session], series_id: int
) -> None:
    withdrawn, acked, judged = score(sessions, series_id, "111000001110000011100")
    set_alarm(sessions, acked.id, acknowledged_at=utcnow(), acknowledged_by="ops")
    set_alarm(sessions, judged.id, verdict="false_positive", verdict_at=utcnow())
    events(sessions)
    assert spans(score(sessions, series_id, "000000000000000000000")) == [
        (8, 10, 3),
        (16, 18, 3),
    ]
    remaining = alarms_of(sessions, series_id)
    assert [a.id for a in remaining] == [acked.id, judged.id]  # kept as they were
    [(event, data)] = events(sessions)
    assert event == "alarm.closed"
    assert (data["id"], data["removed"]) == (withdrawn.id, "withdrawn")
    assert "merged_into" not in data


def test_an_alarm_with_a_verdict_is_neither_merged_nor_split(
    sessions: sessionmaker[Session], series_id: int
) -> None:
    judged, later = score(sessions, series_id, "1111111000111")
    set_alarm(sessions, judged.id, verdict="false_positive", verdict_at=utcnow())
    events(sessions)
    # Window 8 would bridge the two; windows 2..4 would split the first.
    now = score(sessions, series_id, "..000...1")
    assert [a.id for a in now] == [judged.id, later.id]
    assert spans(now) == [(0, 6, 4), (8, 12, 4)]
    assert now[0].verdict == "false_positive" and now[0].status == "dismissed"
    assert events(sessions) == []
    # A flagged window right after it joins the next alarm, not it.
    assert spans(score(sessions, series_id, ".......1")) == [(0, 6, 4), (7, 12, 5)]
    assert events(sessions) == []
    before = score(sessions, series_id, "0000001")
    assert spans(before) == [(6, 6, 1), (7, 12, 5)]
    assert before[0].id == judged.id  # its one flagged window left: kept, not withdrawn


# -- through the detector: points written into a hole ------------------------------------------
@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings; parametrised (indirectly), the most windows a detector pass
    scores, so that the detector takes several passes over a change."""
    limit = getattr(request, "param", None)
    return settings if limit is None else settings.model_copy(update={"detect_max_windows": limit})


@pytest.mark.parametrize("hole", [16, 20], ids=["on-grid", "off-grid"])
@pytest.mark.parametrize(
    "settings", [None, 12], ids=["one-pass", "12-windows-a-pass"], indirect=True
)
def test_history_written_into_a_hole_keeps_alarms_on_their_windows(setup: Setup, hole: int) -> None:
    """Points written into a hole move every later window on the grid: the alarms after it
    move with their windows (a hole of 16 points moves them by 2 positions; one of 20
    puts the points off the grid, so the later windows are cut and scored anew), also when
    the detector takes several passes to get there."""
    stream = make_stream(800, faults=[(600, 624)], seed=3)
    keep = np.r_[TRAINED:520, 520 + hole : 760]
    send(setup.client, setup.headers, setup.series_id, stream.ts[keep], stream.values[keep])
    settled(setup.sessions, setup.series_id)
    before = _alarms_on_fault(setup, stream)
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[520 : 520 + hole],
        stream.values[520 : 520 + hole],
    )
    settled(setup.sessions, setup.series_id)
    with setup.sessions() as session:
        windows = session.scalars(
            select(WindowScore)
            .where(WindowScore.series_id == setup.series_id)
            .order_by(WindowScore.start_ts)
        ).all()
        alarms = session.scalars(select(Alarm).where(Alarm.series_id == setup.series_id)).all()
    # Every window's position counts the points before it, the back-filled ones too.
    point_index = {int(ts): i for i, ts in enumerate(stream.ts)}
    offsets = {point_index[w.start_ts] - 8 * w.seq for w in windows}
    assert len(offsets) == 1, offsets
    assert all(w.end_ts == stream.ts[point_index[w.start_ts] + 15] for w in windows)
    # Each alarm spans its windows: the first and last hold its start and end.
    by_seq = {w.seq: w for w in windows}
    for alarm in alarms:
        assert by_seq[alarm.first_seq].start_ts == alarm.start_ts, alarm.id
        assert by_seq[alarm.last_seq].end_ts == alarm.end_ts, alarm.id
    model = sorted(
        (a.first_seq, a.last_seq) for a in alarms if a.kind == "model" and a.verdict is None
    )
    assert model == _model_episodes(setup, gap=2)
    # The fault's alarm is the same alarm as before.
    after = _alarms_on_fault(setup, stream)
    assert [a["id"] for a in after] == [a["id"] for a in before]


def _alarms_on_fault(setup: Setup, stream: Any) -> list[dict[str, Any]]:
    body = setup.client.get(
        f"/v1/alarms?series_id={setup.series_id}&limit=100", headers=setup.headers
    ).json()
    fault_start, fault_end = int(stream.ts[600]), int(stream.ts[623])
    found = [
        a
        for a in body["alarms"]
        if a["kind"] == "model" and _us(a["start"]) <= fault_end and _us(a["end"]) >= fault_start
    ]
    assert len(found) == 1, body["alarms"]
    return found


def _us(instant: str) -> int:
    return round(datetime.fromisoformat(instant).timestamp() * 1e6)


# -- a verdict racing the detector -------------------------------------------------------------
def test_a_verdict_waits_for_the_detector_and_labels_the_span_it_left(
    engine: Engine, sessions: sessionmaker[Session], series_id: int, settings: Settings
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one writer at a time: the race needs Postgres' row locks")
    [alarm] = score(sessions, series_id, "111")
    # A detector pass grows the alarm and has not committed yet ...
    detector = sessions()
    detector.begin()
    series = detector.get(Series, series_id)
    assert series is not None
    start = T0_US + 3 * STRIDE_US
    grown = WindowScore(
        series_id=series_id,
        start_ts=start,
        end_ts=start + 15_000_000,
        seq=3,
        digest=b"-",
        model_version=1,
        raw_score=9.0,
        score=9.0,
        adjusted_score=9.0,
        threshold=1.0,
        is_anomaly=True,
        quality=[],
        contributions=[1.0, 0.0, 0.0],
    )
    detector.add(grown)
    detector.flush()
    update_alarms(session=detector, series=series, changed=[grown], newest_seq=3, settings=settings)
    # ... when an operator gives the alarm a verdict: it waits for the alarm's row.
    outcome: dict[str, Any] = {}

    def judge() -> None:
        with sessions() as session:
            try:
                outcome["verdict"] = give_verdict(
                    session=session,
                    alarm_id=alarm.id,
                    label="false_positive",
                    note=None,
                    principal=OPERATOR,
                    settings=settings,
                )
            except Exception as exc:  # reported by the asserts below
                outcome["error"] = exc

    judging = threading.Thread(target=judge)
    judging.start()
    _wait_for_a_lock_wait(sessions)
    detector.commit()
    detector.close()
    judging.join(30)
    assert "error" not in outcome, outcome
    with sessions() as session:
        stored = session.get(Alarm, alarm.id)
        assert stored is not None
        assert (stored.first_seq, stored.last_seq, stored.windows) == (0, 3, 4)
        assert stored.verdict == "false_positive" and stored.status == "dismissed"
        [label] = session.scalars(select(Label).where(Label.series_id == series_id)).all()
        assert (label.start_ts, label.end_ts) == (stored.start_ts, stored.end_ts)
        assert label.end_ts == grown.end_ts


def _wait_for_a_lock_wait(sessions: sessionmaker[Session]) -> None:
    """Until a session of this database waits for a row lock."""

    def waiting() -> bool:
        with sessions() as session:
            return bool(
                session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            )

    wait_for(waiting, timeout=10.0)
