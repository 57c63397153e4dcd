"""State of the multi-request flows (alarm watching), shared by `Client` and `AsyncClient`."""

from __future__ import annotations

from typing import Any

from vigil_client._calls import Id, Instant, instant
from vigil_client.models import Alarm, AlarmEvent

SETTLED = frozenset({"dismissed", "confirmed"})
"""Alarm statuses after a verdict: such an alarm changes no more."""
MAX_TRACKED = 1000
"""Unsettled alarms a watch keeps re-reading for changes, newest first."""


class AlarmWatch:
    """Which alarms `watch_alarms` has seen, and what it has yielded of each.

    The service lists alarms newest first by id. The first poll reads them all (since the
    instant given, if any); each later poll reads only down to the oldest alarm that can
    still change (one without a verdict, among the newest `MAX_TRACKED`) or, with none, to
    the newest already seen. An alarm is an `opened` event the first time it appears
    (except, without `include_existing`, those already there at the first poll) and a
    `changed` event whenever its status, end, peak, window count, acknowledgement or verdict
    differ from what was last seen. Alarms are told apart by id, not by time: an alarm
    opened late on old, backfilled data is still new.
    """

    def __init__(
        self, *, series_id: Id | None, since: Instant | None, include_existing: bool
    ) -> None:
        self.series_id = series_id
        self.since = None if since is None else instant(since)
        self.include_existing = include_existing
        self.seen: dict[Id, tuple[Any, ...]] = {}
        self.unsettled: set[int] = set()
        self.newest: int | None = None
        self.polls = 0

    def query(self) -> dict[str, Any]:
        return {"series_id": self.series_id, "since": self.since}

    def floor(self) -> int | None:
        """The smallest alarm id this poll needs (None: read everything)."""
        if self.polls == 0 or self.newest is None:
            return None
        return min([*self.unsettled, self.newest + 1])

    def done(self, alarm: Alarm, floor: int | None) -> bool:
        """Whether the poll may stop before this alarm (newest first: all the rest are older)."""
        return floor is not None and isinstance(alarm.id, int) and alarm.id < floor

    def absorb(self, alarms: list[Alarm]) -> list[AlarmEvent]:
        """Record one poll's alarms; the events to yield, oldest alarm first."""
        quiet = self.polls == 0 and not self.include_existing
        self.polls += 1
        events: list[AlarmEvent] = []
        for alarm in sorted(alarms, key=lambda a: (a.start, str(a.id))):
            fingerprint = alarm.fingerprint()
            previous = self.seen.get(alarm.id)
            self.seen[alarm.id] = fingerprint
            if isinstance(alarm.id, int):
                self.newest = alarm.id if self.newest is None else max(self.newest, alarm.id)
                if alarm.status in SETTLED:
                    self.unsettled.discard(alarm.id)
                else:
                    self.unsettled.add(alarm.id)
            if quiet:
                continue
            if previous is None:
                events.append(AlarmEvent(type="opened", alarm=alarm))
            elif previous != fingerprint:
                events.append(AlarmEvent(type="changed", alarm=alarm))
        if len(self.unsettled) > MAX_TRACKED:
            self.unsettled = set(sorted(self.unsettled)[-MAX_TRACKED:])
        return events
