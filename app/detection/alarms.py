"""Alarms: flagged windows merged into events, their lifecycle, and the operator's verdicts.

A window is flagged for the model when its adjusted score passes its threshold, and for a
data-quality check when that check failed on one of its channels. Each cause (`kind`, `check`)
of a series has its own alarms:

- flagged windows at most `alarm_merge_gap` unflagged windows apart (a series setting) are one
  alarm; a flagged window further away opens a new one;
- an alarm closes once `max(VIGIL_ALARM_CLOSE_AFTER, alarm_merge_gap + 1)` windows have been
  scored after its last flagged one with none of them flagged for its cause (so a closed alarm
  could not have grown any more); the quiet period is counted in windows, so an alarm of a
  stream that stopped sending stays open;
- a verdict ends an alarm too: flagged windows after it open a new one.

Status is one of open, closed, acknowledged, dismissed (verdict false_positive) and confirmed
(verdict: an anomaly class), in that order of precedence from last to first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.models import (
    ALARM_ACKNOWLEDGED,
    ALARM_CLOSED,
    ALARM_CONFIRMED,
    ALARM_DISMISSED,
    ALARM_OPEN,
    Alarm,
    ApiKey,
    Job,
    Label,
    Series,
    WindowScore,
)
from app.detection.events import emit
from app.errors import Conflict, InvalidInput, NotFound
from app.schemas.common import format_us
from app.schemas.labels import RangeLabelCreate
from app.schemas.paging import decode_cursor, page_of
from app.services.labels import create_label
from app.services.series import get_series
from models import FALSE_NEGATIVE, FALSE_POSITIVE

if TYPE_CHECKING:
    from app.runtime import Principal

KIND_MODEL = "model"
KIND_DATA_QUALITY = "data_quality"

Stream = tuple[str, str | None]
"""An alarm's cause: (`model`, None) or (`data_quality`, the check's name)."""


# -- the merging rule, on its own --------------------------------------------------------------
def merge_flags(positions: Iterable[int], *, gap: int) -> list[tuple[int, int]]:
    """Flagged window positions -> (first, last) of each alarm they make: positions at most
    `gap` unflagged windows apart (a difference of at most gap + 1) share one alarm."""
    episodes: list[tuple[int, int]] = []
    for position in sorted(set(positions)):
        if episodes and position - episodes[-1][1] <= gap + 1:
            episodes[-1] = (episodes[-1][0], position)
        else:
            episodes.append((position, position))
    return episodes


def close_after(*, gap: int, settings: Settings) -> int:
    """Quiet windows after its last flagged one that close an alarm."""
    return max(settings.alarm_close_after, gap + 1)


def is_closed(*, last: int, newest: int, gap: int, settings: Settings) -> bool:
    """Whether an alarm whose last flagged window is `last` is over once `newest` is scored."""
    return newest - last >= close_after(gap=gap, settings=settings)


def streams_of(window: WindowScore) -> set[Stream]:
    """The causes a scored window is flagged for."""
    found: set[Stream] = set()
    if window.adjusted_score > window.threshold:
        found.add((KIND_MODEL, None))
    for failed in window.quality:
        found.add((KIND_DATA_QUALITY, failed["check"]))
    return found


def status_of(alarm: Alarm) -> str:
    if alarm.verdict is not None:
        return ALARM_DISMISSED if alarm.verdict == FALSE_POSITIVE else ALARM_CONFIRMED
    if alarm.acknowledged_at is not None:
        return ALARM_ACKNOWLEDGED
    if alarm.closed_at is not None:
        return ALARM_CLOSED
    return ALARM_OPEN


def channel_shares(
    windows: Sequence[WindowScore], stream: Stream, channels: Sequence[str]
) -> list[dict[str, Any]]:
    """`[{"name", "share"}]`, largest first: for a model alarm, the channels' contributions
    to the raw score summed over its windows (negative ones count as 0) and normalised; for a
    data-quality alarm, how often each channel failed the check."""
    totals = np.zeros(len(channels))
    if stream[0] == KIND_MODEL:
        for window in windows:
            totals += np.clip(np.asarray(window.contributions, dtype=np.float64), 0.0, None)
    else:
        index = {name: i for i, name in enumerate(channels)}
        for window in windows:
            for failed in window.quality:
                if failed["check"] == stream[1] and failed["channel"] in index:
                    totals[index[failed["channel"]]] += 1.0
    total = float(totals.sum())
    if total <= 0.0 or not np.isfinite(total):
        return []
    order = np.argsort(-totals, kind="stable")
    return [
        {"name": channels[i], "share": round(float(totals[i]) / total, 4)}
        for i in order.tolist()
        if totals[i] > 0.0
    ]


# -- keeping alarms as windows are scored ------------------------------------------------------
@dataclass
class AlarmChanges:
    opened: list[Alarm] = field(default_factory=list)
    closed: list[Alarm] = field(default_factory=list)


def update_alarms(
    *,
    session: Session,
    series: Series,
    changed: Sequence[WindowScore],
    newest_seq: int | None,
    settings: Settings,
) -> AlarmChanges:
    """Fold (re)scored windows into the series' alarms and close the alarms that went quiet;
    emits alarm.opened and alarm.closed in the caller's transaction."""
    changes = AlarmChanges()
    gap = series.alarm_merge_gap
    reach = gap + 1
    touched: dict[int, tuple[Alarm, Stream]] = {}
    if changed:
        lo = min(w.seq for w in changed)
        hi = max(w.seq for w in changed)
        nearby = session.scalars(
            select(Alarm).where(
                Alarm.series_id == series.id,
                Alarm.last_seq >= lo - reach,
                Alarm.first_seq <= hi + reach,
            )
        ).all()
        by_stream: dict[Stream, list[Alarm]] = {}
        for found in nearby:
            by_stream.setdefault((found.kind, found.check), []).append(found)
        for window in sorted(changed, key=lambda w: w.seq):
            flagged = streams_of(window)
            for stream in sorted(flagged, key=lambda s: (s[0], s[1] or "")):
                joined = _joinable(by_stream.get(stream, []), window.seq, reach)
                if joined is None:
                    alarm = Alarm(
                        series_id=series.id,
                        kind=stream[0],
                        check=stream[1],
                        status=ALARM_OPEN,
                        first_seq=window.seq,
                        last_seq=window.seq,
                        start_ts=window.start_ts,
                        end_ts=window.end_ts,
                        windows=1,
                        peak_score=window.adjusted_score,
                        threshold=window.threshold,
                        model_version=window.model_version,
                        channels=[],
                        opened_at=utcnow(),
                    )
                    by_stream.setdefault(stream, []).append(alarm)
                    changes.opened.append(alarm)
                else:
                    alarm = joined
                    alarm.first_seq = min(alarm.first_seq, window.seq)
                    alarm.last_seq = max(alarm.last_seq, window.seq)
                touched[id(alarm)] = (alarm, stream)
            for stream, alarms in by_stream.items():
                if stream in flagged:
                    continue
                for alarm in alarms:  # a window of it that is no longer flagged
                    if alarm.first_seq <= window.seq <= alarm.last_seq:
                        touched[id(alarm)] = (alarm, stream)
    for alarm in changes.opened:
        session.add(alarm)
    session.flush()
    for alarm, stream in touched.values():
        if not _recompute(session=session, series=series, alarm=alarm, stream=stream):
            if alarm in changes.opened:
                changes.opened.remove(alarm)
                session.delete(alarm)
            elif alarm.verdict is None and alarm.acknowledged_at is None:
                session.delete(alarm)
    session.flush()
    if newest_seq is not None:
        now = utcnow()
        still_open = session.scalars(
            select(Alarm).where(Alarm.series_id == series.id, Alarm.closed_at.is_(None))
        ).all()
        for alarm in still_open:
            if is_closed(last=alarm.last_seq, newest=newest_seq, gap=gap, settings=settings):
                alarm.closed_at = now
                alarm.status = status_of(alarm)
                changes.closed.append(alarm)
    for alarm in changes.opened:
        emit(session=session, event="alarm.opened", data=alarm_json(alarm))
    for alarm in changes.closed:
        emit(session=session, event="alarm.closed", data=alarm_json(alarm))
    return changes


def _joinable(alarms: Sequence[Alarm], seq: int, reach: int) -> Alarm | None:
    """The alarm a flagged window at `seq` belongs to: one that holds it, else the nearest one
    within reach that may still grow (an alarm with a verdict is finished)."""
    best: tuple[int, Alarm] | None = None
    for alarm in alarms:
        if alarm.first_seq <= seq <= alarm.last_seq:
            return alarm
        if alarm.verdict is not None:
            continue
        distance = alarm.first_seq - seq if seq < alarm.first_seq else seq - alarm.last_seq
        if distance <= reach and (best is None or distance < best[0]):
            best = (distance, alarm)
    return None if best is None else best[1]


def _recompute(*, session: Session, series: Series, alarm: Alarm, stream: Stream) -> bool:
    """Set an alarm's span and figures from its flagged windows; False if none is left."""
    rows = session.scalars(
        select(WindowScore)
        .where(
            WindowScore.series_id == series.id,
            WindowScore.seq >= alarm.first_seq,
            WindowScore.seq <= alarm.last_seq,
        )
        .order_by(WindowScore.seq)
    ).all()
    flagged = [row for row in rows if stream in streams_of(row)]
    if not flagged:
        return False
    peak = max(flagged, key=lambda row: row.adjusted_score)
    alarm.first_seq, alarm.last_seq = flagged[0].seq, flagged[-1].seq
    alarm.start_ts, alarm.end_ts = flagged[0].start_ts, flagged[-1].end_ts
    alarm.windows = len(flagged)
    alarm.peak_score = peak.adjusted_score
    alarm.threshold = peak.threshold
    alarm.model_version = peak.model_version
    alarm.channels = channel_shares(flagged, stream, series.channels)
    return True


def alarm_windows(*, session: Session, alarm: Alarm) -> list[WindowScore]:
    """The scored windows an alarm spans, flagged for its cause or not, in order."""
    rows = session.scalars(
        select(WindowScore)
        .where(
            WindowScore.series_id == alarm.series_id,
            WindowScore.seq >= alarm.first_seq,
            WindowScore.seq <= alarm.last_seq,
        )
        .order_by(WindowScore.seq)
    ).all()
    return list(rows)


# -- what clients see --------------------------------------------------------------------------
def alarm_json(alarm: Alarm) -> dict[str, Any]:
    """The alarm as GET /v1/alarms shows it (and as events carry it)."""
    return {
        "id": alarm.id,
        "series_id": alarm.series_id,
        "start": format_us(alarm.start_ts),
        "end": format_us(alarm.end_ts),
        "status": status_of(alarm),
        "kind": alarm.kind,
        "check": alarm.check,
        "peak_score": alarm.peak_score,
        "threshold": alarm.threshold,
        "model_version": alarm.model_version,
        "windows": alarm.windows,
        "channels": list(alarm.channels),
        "verdict": alarm.verdict,
        "opened_at": _iso(alarm.opened_at),
        "closed_at": _iso(alarm.closed_at),
        "acknowledged_at": _iso(alarm.acknowledged_at),
        "acknowledged_by": alarm.acknowledged_by,
        "verdict_at": _iso(alarm.verdict_at),
        "verdict_by": alarm.verdict_by,
        "verdict_note": alarm.verdict_note,
        "label_ids": list(alarm.label_ids or []),
        "retrain_job_id": alarm.retrain_job_id,
    }


def window_json(window: WindowScore, channels: Sequence[str]) -> dict[str, Any]:
    return {
        "start": format_us(window.start_ts),
        "end": format_us(window.end_ts),
        "model_version": window.model_version,
        "raw_score": window.raw_score,
        "score": window.score,
        "adjusted_score": window.adjusted_score,
        "threshold": window.threshold,
        "is_anomaly": window.is_anomaly,
        "data_quality": list(window.quality),
        "channel_contributions": dict(zip(channels, window.contributions, strict=True)),
        "scored_at": _iso(window.scored_at),
    }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return format_us(int(value.timestamp() * 1_000_000))


# -- reading -----------------------------------------------------------------------------------
def list_alarms(
    *,
    session: Session,
    series_id: int | None,
    status: str | None,
    since: int | None,
    until: int | None,
    limit: int,
    cursor: str | None,
    only: frozenset[int] | None,
) -> tuple[list[Alarm], str | None]:
    """Alarms newest first (by id), keyset-paged; `since`/`until` keep those that overlap."""
    after = decode_cursor(cursor, arity=1)
    query = select(Alarm)
    if only is not None:
        query = query.where(Alarm.series_id.in_(sorted(only)))
    if series_id is not None:
        get_series(session=session, series_id=series_id)
        query = query.where(Alarm.series_id == series_id)
    if status is not None:
        query = query.where(Alarm.status == status)
    if since is not None:
        query = query.where(Alarm.end_ts >= since)
    if until is not None:
        query = query.where(Alarm.start_ts <= until)
    if after is not None:
        if not isinstance(after[0], int):
            raise InvalidInput("is not a cursor of this list", field="cursor")
        query = query.where(Alarm.id < after[0])
    rows = session.scalars(query.order_by(Alarm.id.desc()).limit(limit + 1)).all()
    return page_of(rows, limit=limit, key=lambda alarm: (alarm.id,))


def get_alarm(*, session: Session, alarm_id: int, principal: Principal) -> Alarm:
    alarm = session.get(Alarm, alarm_id)
    if alarm is None:
        raise NotFound(f"alarm {alarm_id} does not exist")
    principal.require_series(alarm.series_id)
    return alarm


def list_window_scores(
    *,
    session: Session,
    series_id: int,
    start: int | None,
    end: int | None,
    limit: int,
    cursor: str | None,
) -> tuple[Series, list[WindowScore], str | None]:
    """Stored window scores of a series, oldest first, keyset-paged by start."""
    series = get_series(session=session, series_id=series_id)
    after = decode_cursor(cursor, arity=1)
    query = select(WindowScore).where(WindowScore.series_id == series.id)
    if start is not None:
        query = query.where(WindowScore.start_ts >= start)
    if end is not None:
        query = query.where(WindowScore.end_ts <= end)
    if after is not None:
        if not isinstance(after[0], int):
            raise InvalidInput("is not a cursor of this list", field="cursor")
        query = query.where(WindowScore.start_ts > after[0])
    rows = session.scalars(query.order_by(WindowScore.start_ts).limit(limit + 1)).all()
    items, next_cursor = page_of(rows, limit=limit, key=lambda row: (row.start_ts,))
    return series, items, next_cursor


# -- operators ---------------------------------------------------------------------------------
def key_name(session: Session, principal: Principal) -> str:
    """How the audit trail names an API key: its name and its prefix."""
    prefix = session.scalar(select(ApiKey.prefix).where(ApiKey.id == principal.id))
    return f"{principal.name} ({prefix}…)" if prefix else principal.name


def acknowledge(*, session: Session, alarm_id: int, principal: Principal) -> Alarm:
    """Record who acknowledged the alarm and when; again: no change. 409 after a verdict."""
    alarm = get_alarm(session=session, alarm_id=alarm_id, principal=principal)
    if alarm.verdict is not None:
        raise Conflict(f"alarm {alarm_id} already has the verdict {alarm.verdict!r}")
    if alarm.acknowledged_at is None:
        alarm.acknowledged_at = utcnow()
        alarm.acknowledged_by = key_name(session, principal)
        alarm.status = status_of(alarm)
        session.commit()
    return alarm


@dataclass(frozen=True)
class Verdict:
    alarm: Alarm
    labels: list[Label]
    retrain_job: Job | None


def give_verdict(
    *,
    session: Session,
    alarm_id: int,
    label: str,
    note: str | None,
    principal: Principal,
    settings: Settings,
) -> Verdict:
    """Label the alarm's span with `label` (false_positive, or an anomaly class of the series),
    end the alarm, and count the label towards the debounced retrain, in one transaction."""
    alarm = get_alarm(session=session, alarm_id=alarm_id, principal=principal)
    if alarm.verdict is not None:
        raise Conflict(
            f"alarm {alarm_id} already has the verdict {alarm.verdict!r}; delete its label "
            f"(DELETE /v1/labels/{{id}}) and label the range anew to change it"
        )
    series = get_series(session=session, series_id=alarm.series_id)
    anomaly_classes = sorted(
        name
        for name, kind in series.classes.items()
        if kind == "anomaly" and name != FALSE_NEGATIVE
    )
    if label != FALSE_POSITIVE and label not in anomaly_classes:
        raise InvalidInput(
            f"{label!r} is neither false_positive nor an anomaly class of series "
            f"{series.name!r} ({', '.join(anomaly_classes)})",
            field="label",
        )
    author = key_name(session, principal)
    now = utcnow()
    alarm.verdict = label
    alarm.verdict_at = now
    alarm.verdict_by = author
    alarm.verdict_note = note
    if alarm.closed_at is None:
        alarm.closed_at = now
    alarm.status = status_of(alarm)
    spec = RangeLabelCreate.model_construct(
        series_id=series.id,
        start=alarm.start_ts,
        end=alarm.end_ts,
        label=label,
        author=author,
        note=note,
    )

    def record(created: Label, job: Job | None) -> None:
        session.flush()
        alarm.label_ids = [created.id]
        alarm.retrain_job_id = job.id if job is not None else None
        emit(session=session, event="alarm.verdict", data=alarm_json(alarm))

    created = create_label(
        session=session,
        spec=spec,
        settings=settings,
        flush_scores=lambda: 0,
        check_series=principal.require_series,
        before_commit=record,
    )
    return Verdict(alarm=alarm, labels=[created.label], retrain_job=created.retrain_job)


def open_alarm_counts(session: Session) -> list[tuple[str, int]]:
    """(series name, alarms not closed) for every series that has any: the gauge's values."""
    rows = session.execute(
        select(Series.name, func.count(Alarm.id))
        .join(Alarm, Alarm.series_id == Series.id)
        .where(Alarm.closed_at.is_(None))
        .group_by(Series.name)
    ).all()
    return [(name, int(count)) for name, count in rows]
