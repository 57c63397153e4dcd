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

Windows are scored again when their values change, and history back-filled before them is
scored too; the alarms within reach of such windows are folded again from the stored windows
of their cause (`update_alarms`), so that they stay what the rule above gives:

- an alarm whose middle is no longer flagged, its flagged windows now more than
  `alarm_merge_gap` apart, splits: the earlier part keeps the alarm (its id, acknowledgement
  and state), each later part is a new alarm (alarm.opened);
- a window now flagged that brings two alarms of one cause within reach merges them into the
  older one (lower id), which stays open if either was and keeps the earlier
  acknowledgement; the other is removed (alarm.closed with `removed: "merged"` and
  `merged_into`, the id it lives on as);
- an alarm left without flagged windows is withdrawn: removed, with alarm.closed and
  `removed: "withdrawn"` (an alarm made and emptied by one pass is never announced), unless
  it was acknowledged: then it stays as it was;
- an alarm with a verdict keeps its span and is never split, merged or removed (if none of
  its windows stays flagged, it stays as it was); windows on either side of it do not join
  it, nor join each other across it.

When points are written into a hole, the windows after it move on the grid (`seq` counts the
points before a window) and their alarms move with them (`renumber_alarms`). A verdict or
acknowledgement locks its alarm, as the detector locks the alarms it folds (`lock_alarms`),
so that neither overwrites the other.

Status is one of open, closed, acknowledged, dismissed (verdict false_positive) and confirmed
(verdict: an anomaly class), in that order of precedence from last to first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import ColumnElement, func, select, update
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
    removed: list[tuple[Alarm, dict[str, Any]]] = field(default_factory=list)
    """Alarms deleted, with why (`removed`: withdrawn, or merged and `merged_into`)."""


def lock_alarms(session: Session, *where: ColumnElement[bool]) -> list[Alarm]:
    """The alarms that match `where`, locked against a concurrent verdict or detector pass,
    in id order (so that two lockers never wait for each other), and read afresh.

    On Postgres these are row locks (FOR UPDATE). SQLite has one write lock for the whole
    database: a no-op write to these alarms takes it, so what is read next stays true until
    the commit (as app/training/versions.py locks a series there).
    """
    query = select(Alarm).where(*where).order_by(Alarm.id)
    query = query.execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        return list(session.scalars(query.with_for_update()).all())
    session.execute(
        update(Alarm).where(*where).values(id=Alarm.id).execution_options(synchronize_session=False)
    )
    return list(session.scalars(query).all())


def update_alarms(
    *,
    session: Session,
    series: Series,
    changed: Sequence[WindowScore],
    newest_seq: int | None,
    settings: Settings,
) -> AlarmChanges:
    """Fold (re)scored windows into the series' alarms and close the alarms that went quiet;
    emits alarm.opened, alarm.closed (with `removed` for an alarm deleted) in the caller's
    transaction, which must have flushed `changed`.

    The alarms within reach of the changed windows are folded again from their stored
    windows, cause by cause (`_refold`): so an alarm grows, shrinks, splits, merges with
    another or is withdrawn as its windows' flags change."""
    changes = AlarmChanges()
    gap = series.alarm_merge_gap
    reach = gap + 1
    if changed:
        lo = min(w.seq for w in changed)
        hi = max(w.seq for w in changed)
        nearby = lock_alarms(
            session,
            Alarm.series_id == series.id,
            Alarm.last_seq >= lo - reach,
            Alarm.first_seq <= hi + reach,
        )
        by_stream: dict[Stream, list[Alarm]] = {}
        for window in changed:
            for stream in streams_of(window):
                by_stream.setdefault(stream, [])
        for found in nearby:  # in id order: the oldest first
            by_stream.setdefault((found.kind, found.check), []).append(found)
        # Each cause's region: the changed windows, the reach around them, its alarms there.
        regions = {
            stream: (
                min([lo - reach] + [a.first_seq for a in alarms]),
                max([hi + reach] + [a.last_seq for a in alarms]),
            )
            for stream, alarms in by_stream.items()
        }
        windows: Sequence[WindowScore] = ()
        if regions:  # else no changed window is flagged, and no alarm is near them
            windows = session.scalars(
                select(WindowScore)
                .where(
                    WindowScore.series_id == series.id,
                    WindowScore.seq >= min(r[0] for r in regions.values()),
                    WindowScore.seq <= max(r[1] for r in regions.values()),
                )
                .order_by(WindowScore.seq, WindowScore.start_ts)
            ).all()
        for stream in sorted(by_stream, key=lambda s: (s[0], s[1] or "")):
            first, last = regions[stream]
            _refold(
                session=session,
                series=series,
                stream=stream,
                alarms=by_stream[stream],
                flagged=[w for w in windows if first <= w.seq <= last and stream in streams_of(w)],
                reach=reach,
                changes=changes,
            )
    now = utcnow()
    for alarm, why in changes.removed:
        if alarm.closed_at is None:
            alarm.closed_at = now
        alarm.status = status_of(alarm)
        emit(session=session, event="alarm.closed", data=alarm_json(alarm) | why)
        session.delete(alarm)
    session.flush()
    if newest_seq is not None:
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


def _refold(
    *,
    session: Session,
    series: Series,
    stream: Stream,
    alarms: Sequence[Alarm],
    flagged: Sequence[WindowScore],
    reach: int,
    changes: AlarmChanges,
) -> None:
    """Make one cause's alarms of a region what the rule gives on its flagged windows.

    `alarms` (oldest first) are all the cause's alarms in the region, `flagged` its windows
    flagged for the cause, by seq. An alarm with a verdict keeps the flagged windows of its
    span and nothing else; it is never split, merged or removed, and the others' windows do
    not group across it. The other flagged windows group into episodes (`merge_flags`); each
    episode keeps the oldest alarm within reach of it (ties: the older id wins, so the
    earlier part of a split keeps its alarm), absorbs the other ones (removed: merged), or
    opens a new alarm. An alarm no episode kept is withdrawn (removed), unless it was
    acknowledged: that one is kept as it was.
    """
    judged = [a for a in alarms if a.verdict is not None]
    free = [a for a in alarms if a.verdict is None]
    episodes: list[list[WindowScore]] = []
    for alarm in judged:
        own = [w for w in flagged if alarm.first_seq <= w.seq <= alarm.last_seq]
        if own:
            _describe(alarm, own, stream, series.channels)
    for window in flagged:
        if any(a.first_seq <= window.seq <= a.last_seq for a in judged):
            continue
        if episodes:
            previous = episodes[-1][-1].seq
            if window.seq - previous <= reach and not _judged_between(judged, previous, window.seq):
                episodes[-1].append(window)
                continue
        episodes.append([window])
    kept: set[int] = set()
    for episode in episodes:
        first, last = episode[0].seq, episode[-1].seq
        near = [
            a
            for a in free
            if id(a) not in kept
            and a.first_seq - reach <= last
            and first <= a.last_seq + reach
            and not _judged_between(judged, min(last, a.last_seq), max(first, a.first_seq))
        ]
        if near:
            alarm, absorbed = near[0], near[1:]
            for gone in absorbed:
                _absorb(alarm, gone)
                changes.removed.append((gone, {"removed": "merged", "merged_into": alarm.id}))
            kept.update(id(a) for a in near)
        else:
            alarm = Alarm(
                series_id=series.id,
                kind=stream[0],
                check=stream[1],
                status=ALARM_OPEN,
                channels=[],
                opened_at=utcnow(),
            )
            session.add(alarm)
            changes.opened.append(alarm)
        _describe(alarm, episode, stream, series.channels)
    for alarm in free:
        if id(alarm) not in kept and alarm.acknowledged_at is None:
            changes.removed.append((alarm, {"removed": "withdrawn"}))


def _judged_between(judged: Sequence[Alarm], lo: int, hi: int) -> bool:
    """Whether an alarm with a verdict lies between positions `lo` and `hi`."""
    return any(lo < a.first_seq and a.last_seq < hi for a in judged)


def _absorb(alarm: Alarm, gone: Alarm) -> None:
    """What a merged alarm keeps of the one it absorbs: open if either was, and the earlier
    acknowledgement (the later part's operator saw it)."""
    if gone.closed_at is None:
        alarm.closed_at = None
    if gone.acknowledged_at is not None and (
        alarm.acknowledged_at is None or gone.acknowledged_at < alarm.acknowledged_at
    ):
        alarm.acknowledged_at, alarm.acknowledged_by = gone.acknowledged_at, gone.acknowledged_by
    alarm.opened_at = min(alarm.opened_at, gone.opened_at)


def _describe(
    alarm: Alarm, flagged: Sequence[WindowScore], stream: Stream, channels: Sequence[str]
) -> None:
    """Set an alarm's span and figures from its flagged windows (in order, at least one)."""
    peak = max(flagged, key=lambda row: row.adjusted_score)
    alarm.first_seq, alarm.last_seq = flagged[0].seq, flagged[-1].seq
    alarm.start_ts, alarm.end_ts = flagged[0].start_ts, flagged[-1].end_ts
    alarm.windows = len(flagged)
    alarm.peak_score = peak.adjusted_score
    alarm.threshold = peak.threshold
    alarm.model_version = peak.model_version
    alarm.channels = channel_shares(flagged, stream, channels)
    alarm.status = status_of(alarm)


def renumber_alarms(*, session: Session, series_id: int, since_ts: int) -> None:
    """Give the alarms from `since_ts` on the positions their windows have now.

    Points written into a hole move every later window on the grid (a window's position
    counts the points before it): the detector renumbers those windows, or cuts them anew
    where the points moved off the grid, before it folds them into alarms. An alarm's span
    in time stays: its positions become those of the windows within it (the ones that
    overlap it, if none fits within it any more); `update_alarms` then re-folds it.
    """
    alarms = lock_alarms(session, Alarm.series_id == series_id, Alarm.end_ts >= since_ts)
    of_series = WindowScore.series_id == series_id
    span = select(func.min(WindowScore.seq), func.max(WindowScore.seq))
    for alarm in alarms:
        within = (WindowScore.start_ts >= alarm.start_ts, WindowScore.end_ts <= alarm.end_ts)
        overlapping = (WindowScore.end_ts >= alarm.start_ts, WindowScore.start_ts <= alarm.end_ts)
        for bounds in (within, overlapping):
            first, last = session.execute(span.where(of_series, *bounds)).one()
            if first is not None:
                alarm.first_seq, alarm.last_seq = int(first), int(last)
                break


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


def get_alarm(
    *, session: Session, alarm_id: int, principal: Principal, lock: bool = False
) -> Alarm:
    """The alarm; with `lock`, locked until the commit (`lock_alarms`), for a change that must
    not race with the detector re-folding it."""
    if lock:
        alarm = next(iter(lock_alarms(session, Alarm.id == alarm_id)), None)
    else:
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
    alarm = get_alarm(session=session, alarm_id=alarm_id, principal=principal, lock=True)
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
    end the alarm, and count the label towards the debounced retrain, in one transaction.

    The alarm stays locked from here to the commit, so a detector pass that re-folds it
    either went first (the label covers the span it left) or waits and sees the verdict.
    """
    alarm = get_alarm(session=session, alarm_id=alarm_id, principal=principal, lock=True)
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
