"""State of the multi-request flows (alarm watching), shared by `Client` and `AsyncClient`."""

from __future__ import annotations

from typing import Any

from vigil_client._calls import Id, Instant, instant
from vigil_client.models import Alarm, AlarmEvent


class AlarmWatch:
    """Which alarms `watch_alarms` has seen, and what it has yielded of each.

    Every poll lists the alarms (of one series or all) that the service has `since` the
    instant given, page by page. An alarm is an `opened` event the first time it appears
    (except, without `include_existing`, those already there at the first poll) and a
    `changed` event whenever its status, end, peak, window count or verdict differ from what
    was last seen. Alarms are told apart by id, not by time: an alarm opened late on old,
    backfilled data is still new.
    """

    def __init__(
        self, *, series_id: Id | None, since: Instant | None, include_existing: bool
    ) -> None:
        self.series_id = series_id
        self.since = None if since is None else instant(since)
        self.include_existing = include_existing
        self.seen: dict[Id, tuple[Any, ...]] = {}
        self.polls = 0

    def query(self) -> dict[str, Any]:
        return {"series_id": self.series_id, "since": self.since}

    def absorb(self, alarms: list[Alarm]) -> list[AlarmEvent]:
        """Record one poll's alarms; the events to yield, oldest alarm first."""
        quiet = self.polls == 0 and not self.include_existing
        self.polls += 1
        events: list[AlarmEvent] = []
        for alarm in sorted(alarms, key=lambda a: (a.start, str(a.id))):
            fingerprint = alarm.fingerprint()
            previous = self.seen.get(alarm.id)
            self.seen[alarm.id] = fingerprint
            if quiet:
                continue
            if previous is None:
                events.append(AlarmEvent(type="opened", alarm=alarm))
            elif previous != fingerprint:
                events.append(AlarmEvent(type="changed", alarm=alarm))
        return events
