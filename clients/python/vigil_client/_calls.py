"""Every operation of the API as a `Call`: the request to send and how to read its answer.

This module is the one implementation of request building and response parsing; `Client`
and `AsyncClient` only send a `Call` (with retries) and hand its parsed result back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter

from vigil_client import _frames
from vigil_client.errors import error_class
from vigil_client.models import (
    Alarm,
    AlarmDetail,
    Delivery,
    IngestResult,
    Job,
    Label,
    LabelCreated,
    ModelVersion,
    ModelVersions,
    Page,
    Points,
    Readiness,
    ScoreResponse,
    Series,
    StoredScore,
    Verdict,
    Webhook,
    WebhookCreated,
)

T = TypeVar("T")
Id = int | str
Instant = datetime | str | float | int
"""A timestamp: an aware datetime (a naive one is taken as UTC), RFC 3339 text, or epoch s."""

IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the parser of its answer.

    `replay_safe`: the request may be sent again after a connection broke mid-way (it is
    naturally idempotent, or carries an `Idempotency-Key`). A request the service never
    received (connection refused) and an answer of 429 or 503 are retried whatever this says:
    the service did nothing.
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    replay_safe: bool = True
    accept: frozenset[int] = frozenset()
    """Non-2xx statuses that are an answer, not an error (GET /readyz's 503)."""
    retry: bool = True


# -- answers ---------------------------------------------------------------------------------


def raise_for_problem(call: Call[Any], response: httpx.Response, *, attempts: int = 1) -> None:
    """Raise the typed `ApiError` for an error response; return for a success."""
    if response.is_success or response.status_code in call.accept:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    raise error_class(response.status_code)(
        status=response.status_code,
        method=call.method,
        url=str(response.request.url) if response.request else call.path,
        problem=problem,
        headers={k.lower(): v for k, v in response.headers.items()},
        attempts=attempts,
    )


def _model(kind: type[T]) -> Callable[[httpx.Response], T]:
    adapter = TypeAdapter(kind)

    def parse(response: httpx.Response) -> T:
        return adapter.validate_json(response.content)

    return parse


def _none(response: httpx.Response) -> None:
    return None


def _page(kind: type[T], key: str) -> Callable[[httpx.Response], Page[T]]:
    """A list answer: `{"<key>": [...], "next_cursor": ...}`, or a bare JSON array (services
    from before cursor paging: `_legacy_cursor` pages them on)."""
    adapter = TypeAdapter(list[kind])  # type: ignore[valid-type]

    def parse(response: httpx.Response) -> Page[T]:
        body = response.json()
        if isinstance(body, list):
            items = adapter.validate_python(body)
            limit = int(response.request.url.params.get("limit", "0") or 0)
            return Page[T](items=items, next_cursor=_legacy_cursor(response, len(items), limit))
        if not isinstance(body, dict):
            raise ValueError(f"expected a JSON object or array, got {type(body).__name__}")
        raw = body.get(key)
        if raw is None:  # another name for the items: the one list in the answer
            lists = [v for k, v in body.items() if isinstance(v, list) and k != "next_cursor"]
            raw = lists[0] if len(lists) == 1 else []
        return Page[T](items=adapter.validate_python(raw), next_cursor=body.get("next_cursor"))

    return parse


LEGACY = "~"
"""Prefix of a cursor this client made itself for a service that answers bare arrays and
pages by `offset` (series, labels) or `before` (jobs)."""


def _legacy_cursor(response: httpx.Response, count: int, limit: int) -> str | None:
    if not limit or count < limit:
        return None
    params = response.request.url.params
    path = response.request.url.path
    if path.rstrip("/").endswith("/jobs"):
        ids = [item["id"] for item in response.json() if isinstance(item, dict) and "id" in item]
        return f"{LEGACY}before={min(ids)}" if ids else None
    offset = int(params.get("offset", "0") or 0)
    return f"{LEGACY}offset={offset + count}"


def paging(limit: int | None, cursor: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is None:
        return params
    if cursor.startswith(LEGACY):
        name, _, value = cursor[len(LEGACY) :].partition("=")
        params[name] = int(value)
    else:
        params["cursor"] = cursor
    return params


# -- request values -------------------------------------------------------------------------


def instant(value: Instant) -> str | float:
    """A timestamp as the API reads it: RFC 3339 in UTC, or epoch seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        text = value.astimezone(UTC).isoformat()
        return text.replace("+00:00", "Z")
    if isinstance(value, bool):
        raise TypeError("a timestamp must be a datetime, a string or epoch seconds, not a bool")
    if isinstance(value, int | float):
        return float(value)
    return str(value)


def _query(**values: Any) -> dict[str, Any]:
    """Query parameters, without the ones left out (None)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = instant(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out[name] = value
    return out


def _body(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def idempotency_key() -> str:
    return str(uuid.uuid4())


# -- health ------------------------------------------------------------------------------------


def health() -> Call[bool]:
    return Call("GET", "/healthz", lambda r: r.json().get("status") == "ok")


def ready() -> Call[Readiness]:
    return Call("GET", "/readyz", _model(Readiness), accept=frozenset({503}), retry=False)


def openapi() -> Call[dict[str, Any]]:
    return Call("GET", "/openapi.json", lambda r: dict(r.json()))


# -- series ------------------------------------------------------------------------------------


def create_series(
    *,
    name: str,
    channels: Sequence[str],
    window_size: int,
    stride: int,
    classes: Mapping[str, str] | None = None,
    threshold_quantile: float | None = None,
    training: Mapping[str, Any] | None = None,
    max_gap: float | None = None,
) -> Call[Series]:
    body = _body(
        name=name,
        channels=list(channels),
        window_size=window_size,
        stride=stride,
        classes=dict(classes) if classes is not None else None,
        threshold_quantile=threshold_quantile,
        training=dict(training) if training is not None else None,
        max_gap=max_gap,
    )
    # Not replay_safe: a repeat after a lost answer would find the name taken (409).
    return Call("POST", "/v1/series", _model(Series), json=body, replay_safe=False)


def list_series(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[Series]]:
    return Call("GET", "/v1/series", _page(Series, "series"), params=paging(limit, cursor))


def get_series(series_id: Id) -> Call[Series]:
    return Call("GET", f"/v1/series/{series_id}", _model(Series))


def update_series(
    series_id: Id,
    *,
    classes: Mapping[str, str | None] | None = None,
    threshold_quantile: float | None = None,
    training: Mapping[str, Any] | None = None,
    max_gap: float | None = None,
    reset_max_gap: bool | None = None,
) -> Call[Series]:
    body = _body(
        classes=dict(classes) if classes is not None else None,
        threshold_quantile=threshold_quantile,
        training=dict(training) if training is not None else None,
        max_gap=max_gap,
        reset_max_gap=reset_max_gap,
    )
    return Call("PATCH", f"/v1/series/{series_id}", _model(Series), json=body)


def delete_series(series_id: Id) -> Call[None]:
    return Call("DELETE", f"/v1/series/{series_id}", _none)


# -- points ------------------------------------------------------------------------------------


def ingest_points(
    series_id: Id, *, timestamps: Sequence[Instant], values: Any
) -> Call[IngestResult]:
    body = {"timestamps": [instant(t) for t in timestamps], "values": _frames.rows(values)}
    # Points are upserted on (series, timestamp): sending a batch twice changes nothing.
    return Call("POST", f"/v1/series/{series_id}/points", _model(IngestResult), json=body)


def ingest_csv(series_id: Id, csv: str | bytes) -> Call[IngestResult]:
    content = csv.encode() if isinstance(csv, str) else csv
    return Call(
        "POST",
        f"/v1/series/{series_id}/points",
        _model(IngestResult),
        content=content,
        headers={"Content-Type": "text/csv"},
    )


def read_points(
    series_id: Id,
    *,
    start: Instant | None = None,
    end: Instant | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Points]:
    params = _query(
        start=None if start is None else instant(start),
        end=None if end is None else instant(end),
        limit=limit,
        cursor=cursor,
    )
    return Call("GET", f"/v1/series/{series_id}/points", _model(Points), params=params)


# -- scoring -----------------------------------------------------------------------------------


def score_windows(series_id: Id, windows: Any, *, detail: str | None = None) -> Call[ScoreResponse]:
    body = {"series_id": series_id, "windows": _frames.windows_json(windows)}
    return Call("POST", "/v1/score", _model(ScoreResponse), json=body, params=_query(detail=detail))


def score_array(series_id: Id, windows: Any, *, detail: str | None = None) -> Call[ScoreResponse]:
    content, shape = _frames.windows_binary(windows)
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Vigil-Series-Id": str(series_id),
        "X-Vigil-Shape": ",".join(str(n) for n in shape),
    }
    return Call(
        "POST",
        "/v1/score",
        _model(ScoreResponse),
        content=content,
        headers=headers,
        params=_query(detail=detail),
    )


def score_range(
    series_id: Id,
    *,
    start: Instant,
    end: Instant,
    detail: str | None = None,
    cursor: str | None = None,
) -> Call[ScoreResponse]:
    body = _body(series_id=series_id, start=instant(start), end=instant(end), cursor=cursor)
    return Call("POST", "/v1/score", _model(ScoreResponse), json=body, params=_query(detail=detail))


def list_scores(
    series_id: Id,
    *,
    start: Instant | None = None,
    end: Instant | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[StoredScore]]:
    params = {**_query(start=start, end=end), **paging(limit, cursor)}
    return Call(
        "GET", f"/v1/series/{series_id}/scores", _page(StoredScore, "scores"), params=params
    )


# -- labels ------------------------------------------------------------------------------------


def label_range(
    series_id: Id,
    *,
    start: Instant,
    end: Instant,
    label: str,
    author: str | None = None,
    note: str | None = None,
    key: str | None = None,
) -> Call[LabelCreated]:
    body = _body(
        series_id=series_id,
        start=instant(start),
        end=instant(end),
        label=label,
        author=author,
        note=note,
    )
    return _idempotent_post("/v1/labels", _model(LabelCreated), body, key)


def label_score(
    score_id: str,
    *,
    label: str,
    series_id: Id | None = None,
    author: str | None = None,
    note: str | None = None,
    key: str | None = None,
) -> Call[LabelCreated]:
    body = _body(score_id=str(score_id), label=label, series_id=series_id, author=author, note=note)
    return _idempotent_post("/v1/labels", _model(LabelCreated), body, key)


def list_labels(
    *,
    series_id: Id | None = None,
    label: str | None = None,
    include_deleted: bool | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Label]]:
    params = {
        **_query(series_id=series_id, label=label, include_deleted=include_deleted),
        **paging(limit, cursor),
    }
    return Call("GET", "/v1/labels", _page(Label, "labels"), params=params)


def get_label(label_id: Id) -> Call[Label]:
    return Call("GET", f"/v1/labels/{label_id}", _model(Label))


def delete_label(label_id: Id) -> Call[None]:
    return Call("DELETE", f"/v1/labels/{label_id}", _none)


# -- training, jobs, models --------------------------------------------------------------------


def train(series_id: Id, *, key: str | None = None) -> Call[Job]:
    return _idempotent_post(f"/v1/series/{series_id}/train", _model(Job), None, key)


def list_jobs(
    *,
    series_id: Id | None = None,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Job]]:
    params = {**_query(series_id=series_id, status=status), **paging(limit, cursor)}
    return Call("GET", "/v1/jobs", _page(Job, "jobs"), params=params)


def get_job(job_id: Id) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{job_id}", _model(Job))


def list_models(
    series_id: Id, *, limit: int | None = None, cursor: str | None = None
) -> Call[ModelVersions]:
    return Call(
        "GET",
        f"/v1/series/{series_id}/models",
        _model(ModelVersions),
        params=paging(limit, cursor),
    )


def activate_model(series_id: Id, version: int) -> Call[ModelVersion]:
    return Call("POST", f"/v1/series/{series_id}/models/{version}/activate", _model(ModelVersion))


# -- alarms ------------------------------------------------------------------------------------


def list_alarms(
    *,
    series_id: Id | None = None,
    status: str | None = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Alarm]]:
    params = {
        **_query(
            series_id=series_id,
            status=status,
            since=None if since is None else instant(since),
            until=None if until is None else instant(until),
        ),
        **paging(limit, cursor),
    }
    return Call("GET", "/v1/alarms", _page(Alarm, "alarms"), params=params)


def get_alarm(alarm_id: Id) -> Call[AlarmDetail]:
    return Call("GET", f"/v1/alarms/{alarm_id}", _model(AlarmDetail))


def alarm_verdict(
    alarm_id: Id, *, label: str, note: str | None = None, key: str | None = None
) -> Call[Verdict]:
    body = _body(label=label, note=note)
    # Not replay_safe: one verdict per alarm, so a repeat after a lost answer gets 409.
    return _idempotent_post(
        f"/v1/alarms/{alarm_id}/verdict", _model(Verdict), body, key, replay_safe=False
    )


def acknowledge_alarm(alarm_id: Id, *, key: str | None = None) -> Call[Alarm]:
    # Acknowledging again changes nothing: safe to repeat.
    return _idempotent_post(f"/v1/alarms/{alarm_id}/acknowledge", _model(Alarm), None, key)


# -- webhooks ----------------------------------------------------------------------------------


def create_webhook(
    *,
    url: str,
    events: Sequence[str],
    secret: str | None = None,
    enabled: bool | None = None,
    key: str | None = None,
) -> Call[WebhookCreated]:
    body = _body(url=url, secret=secret, events=list(events), enabled=enabled)
    # Not replay_safe unless the service keeps Idempotency-Keys for it: a repeat after a lost
    # answer could register the receiver twice.
    return _idempotent_post("/v1/webhooks", _model(WebhookCreated), body, key, replay_safe=False)


def list_webhooks(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[Webhook]]:
    return Call("GET", "/v1/webhooks", _page(Webhook, "webhooks"), params=paging(limit, cursor))


def delete_webhook(webhook_id: Id) -> Call[None]:
    return Call("DELETE", f"/v1/webhooks/{webhook_id}", _none)


def get_webhook(webhook_id: Id) -> Call[Webhook]:
    return Call("GET", f"/v1/webhooks/{webhook_id}", _model(Webhook))


def list_deliveries(
    webhook_id: Id,
    *,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Delivery]]:
    return Call(
        "GET",
        f"/v1/webhooks/{webhook_id}/deliveries",
        _page(Delivery, "deliveries"),
        params={**_query(status=status), **paging(limit, cursor)},
    )


def _idempotent_post(
    path: str,
    parse: Callable[[httpx.Response], T],
    body: Any,
    key: str | None,
    *,
    replay_safe: bool = True,
) -> Call[T]:
    """A POST that carries an `Idempotency-Key`: one key for every attempt, so that the
    service performs it once however often it is sent (where the service keeps keys)."""
    return Call(
        "POST",
        path,
        parse,
        json=body,
        headers={IDEMPOTENCY_HEADER: key or idempotency_key()},
        replay_safe=replay_safe,
    )
