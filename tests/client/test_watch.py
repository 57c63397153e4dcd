"""`watch_alarms`' bookkeeping (vigil_client._flows.AlarmWatch), without a server: which alarms
are events, and how far down the newest-first list each poll must read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vigil_client._flows import AlarmWatch
from vigil_client.models import Alarm

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def alarm(id: int, status: str = "open", windows: int = 1) -> Alarm:
    start = T0 + timedelta(minutes=id)
    return Alarm(id=id, series_id=1, start=start, end=start, status=status, windows=windows)


def test_existing_alarms_are_quiet_then_new_and_changed_ones_are_events() -> None:
    watch = AlarmWatch(series_id=1, since=None, include_existing=False)
    assert watch.floor() is None, "the first poll reads everything"
    assert watch.absorb([alarm(3), alarm(2, "confirmed"), alarm(1, "closed")]) == []
    assert watch.floor() == 1, "down to the oldest alarm without a verdict"

    events = watch.absorb([alarm(4), alarm(3, windows=2), alarm(1, "closed")])
    assert [(e.type, e.alarm.id) for e in events] == [("changed", 3), ("opened", 4)]
    watch.absorb([alarm(4, "dismissed"), alarm(3, "confirmed"), alarm(1, "confirmed")])
    assert watch.floor() == 5, "nothing can change: only newer alarms are read"
    assert watch.done(alarm(4), 5) and not watch.done(alarm(5), 5)


def test_include_existing_yields_the_first_poll() -> None:
    watch = AlarmWatch(series_id=None, since=T0, include_existing=True)
    assert watch.query() == {"series_id": None, "since": "2026-12-01T00:00:00Z"}
    events = watch.absorb([alarm(2), alarm(1)])
    assert [(e.type, e.alarm.id) for e in events] == [("opened", 1), ("opened", 2)]
