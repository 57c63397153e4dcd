"""Alarms raised by detection on ingest (scope `read`), verdicts and acknowledgements (scope
`label`), and the stored window scores of a series (scope `read`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response

from app.api.deps import Labeller, Reader, RuntimeDep, SessionDep
from app.detection.alarms import (
    acknowledge,
    alarm_json,
    alarm_windows,
    get_alarm,
    give_verdict,
    list_alarms,
    list_window_scores,
    window_json,
)
from app.detection.export import (
    EXPORT_RESPONSE,
    alarms_csv,
    alarms_parquet,
    media_type,
    negotiate,
    scores_csv,
    scores_parquet,
)
from app.detection.schemas import (
    AlarmDetail,
    AlarmOut,
    AlarmPage,
    AlarmStatus,
    ScorePage,
    VerdictIn,
    VerdictOut,
)
from app.errors import InvalidInput
from app.schemas.common import AUTH_RESPONSES, MAX_DB_ID, SeriesIdPath, TimestampError, to_us
from app.schemas.labels import RetrainOut
from app.schemas.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from app.services.series import get_series

router = APIRouter(prefix="/v1", tags=["alarms"], responses=AUTH_RESPONSES)

AlarmIdPath = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="The alarm's id.")]
InstantQuery = Annotated[
    str | None,
    Query(max_length=64, description="ISO-8601 date-time with offset, or epoch seconds."),
]

ALARM_GONE = (
    "The alarm does not exist: never, or no longer (an alarm merged into another, or withdrawn "
    "when its windows were scored again, is removed; its last alarm.closed event says which)"
)


def _instant(value: str | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        return to_us(value)
    except TimestampError as exc:
        raise InvalidInput(str(exc), field=field) from None


def _file(form: str, body: str | bytes, next_cursor: str | None) -> Response:
    """A page as CSV or Parquet; the next page's cursor in the `Vigil-Next-Cursor` header."""
    headers = {"Vigil-Next-Cursor": next_cursor} if next_cursor else {}
    return Response(body, media_type=media_type(form), headers=headers)  # type: ignore[arg-type]


@router.get(
    "/alarms",
    summary="List alarms, newest first",
    description=(
        "Alarms that detection on ingest raised: consecutive flagged windows of a series "
        "(at most the series' `alarm_merge_gap` unflagged windows apart) as one event, "
        "`kind` `model` or `data_quality` (with `check`). `since`/`until` keep alarms that "
        "overlap that time. Paged: pass `next_cursor` as `cursor`. `Accept: text/csv` gives "
        "CSV, `Accept: application/vnd.apache.parquet` Parquet (typed columns); the next "
        "cursor then comes in the `Vigil-Next-Cursor` header."
    ),
    response_model=AlarmPage,
    responses={**EXPORT_RESPONSE, 404: {"description": "The series does not exist"}},
)
def list_all(
    session: SessionDep,
    key: Reader,
    series_id: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
    status: AlarmStatus | None = None,
    since: InstantQuery = None,
    until: InstantQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    if series_id is not None:
        key.require_series(series_id)
    alarms, next_cursor = list_alarms(
        session=session,
        series_id=series_id,
        status=status,
        since=_instant(since, "since"),
        until=_instant(until, "until"),
        limit=limit,
        cursor=cursor,
        only=key.series,
    )
    items = [alarm_json(alarm) for alarm in alarms]
    form = negotiate(accept)
    if form == "csv":
        return _file(form, alarms_csv(items), next_cursor)
    if form == "parquet":
        return _file(form, alarms_parquet(items), next_cursor)
    return {"alarms": items, "next_cursor": next_cursor}


@router.get(
    "/alarms/{alarm_id}",
    summary="Read an alarm with the scores of its windows",
    response_model=AlarmDetail,
    responses={404: {"description": ALARM_GONE}},
)
def read(alarm_id: AlarmIdPath, session: SessionDep, key: Reader) -> Any:
    alarm = get_alarm(session=session, alarm_id=alarm_id, principal=key)
    channels = get_series(session=session, series_id=alarm.series_id).channels
    windows = alarm_windows(session=session, alarm=alarm)
    return {**alarm_json(alarm), "scores": [window_json(w, channels) for w in windows]}


@router.post(
    "/alarms/{alarm_id}/verdict",
    summary="Give an alarm its verdict: a false alarm, or a confirmed fault",
    description=(
        "Labels the alarm's span [start, end] with `label` (a range label, POST /v1/labels, "
        "whose author is the API key): `false_positive` dismisses the alarm and teaches the "
        "feedback class; an anomaly class of the series confirms the fault. The alarm ends "
        "(later flagged windows open a new one) and the label counts towards the debounced "
        "retrain, named in `retrain`. One verdict per alarm: another gets 409 (delete the "
        "label and label the range anew to change it)."
    ),
    response_model=VerdictOut,
    responses={
        404: {"description": ALARM_GONE},
        409: {"description": "The alarm already has a verdict"},
        422: {"description": "The label is neither false_positive nor an anomaly class"},
    },
)
def verdict(
    alarm_id: AlarmIdPath, body: VerdictIn, session: SessionDep, runtime: RuntimeDep, key: Labeller
) -> Any:
    given = give_verdict(
        session=session,
        alarm_id=alarm_id,
        label=body.label,
        note=body.note,
        principal=key,
        settings=runtime.settings,
    )
    return VerdictOut(
        alarm=AlarmOut.model_validate(alarm_json(given.alarm)),
        label_ids=[label.id for label in given.labels],
        retrain=RetrainOut.of(given.retrain_job) if given.retrain_job is not None else None,
    )


@router.post(
    "/alarms/{alarm_id}/acknowledge",
    summary="Acknowledge an alarm (records which API key did, and when)",
    description="Acknowledging again changes nothing. 409 once the alarm has a verdict.",
    response_model=AlarmOut,
    responses={
        404: {"description": ALARM_GONE},
        409: {"description": "The alarm already has a verdict"},
    },
)
def acknowledge_alarm(alarm_id: AlarmIdPath, session: SessionDep, key: Labeller) -> Any:
    return alarm_json(acknowledge(session=session, alarm_id=alarm_id, principal=key))


@router.get(
    "/series/{series_id}/scores",
    summary="Stored window scores of a series, oldest first",
    description=(
        "The windows detection on ingest scored (no /v1/score call needed), with `start` <= "
        "window start and window end <= `end`. Paged: pass `next_cursor` as `cursor`. "
        "`Accept: text/csv` gives CSV, `Accept: application/vnd.apache.parquet` Parquet "
        "(typed columns); the next cursor then comes in the `Vigil-Next-Cursor` header."
    ),
    response_model=ScorePage,
    responses={**EXPORT_RESPONSE, 404: {"description": "The series does not exist"}},
)
def series_scores(
    series_id: SeriesIdPath,
    session: SessionDep,
    key: Reader,
    start: InstantQuery = None,
    end: InstantQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    series, rows, next_cursor = list_window_scores(
        session=session,
        series_id=series_id,
        start=_instant(start, "start"),
        end=_instant(end, "end"),
        limit=limit,
        cursor=cursor,
    )
    items = [window_json(row, series.channels) for row in rows]
    form = negotiate(accept)
    if form == "csv":
        return _file(form, scores_csv(items, series.channels), next_cursor)
    if form == "parquet":
        return _file(form, scores_parquet(items, series.channels), next_cursor)
    return {"scores": items, "next_cursor": next_cursor}
