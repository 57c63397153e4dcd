"""`AsyncClient`: the asyncio client, method for method the same as `Client` (`_sync.py`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from vigil_client import _calls, _frames
from vigil_client._calls import Call, Id, Instant
from vigil_client._flows import AlarmWatch
from vigil_client._retry import Retry
from vigil_client._sync import client_headers, request_headers
from vigil_client.errors import JobFailed, TransportError
from vigil_client.models import (
    Alarm,
    AlarmDetail,
    AlarmEvent,
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
    ScoreResult,
    Series,
    StoredScore,
    Verdict,
    Webhook,
    WebhookCreated,
)

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of one Vigil service.

    >>> async with AsyncClient("http://127.0.0.1:8000", api_key="...") as vigil:
    ...     series = await vigil.get_series(1)

    Errors are raised as `ApiError` subclasses (`InvalidInput` carries the wrong `field`);
    429 and 503 answers and connection failures are retried as `retry` says.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = retry or Retry()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=client_headers(api_key, headers),
            timeout=timeout,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sending ---------------------------------------------------------------------------

    async def send(self, call: Call[T]) -> T:
        """Send a call, retrying as `self.retry` allows; its parsed answer or a typed error."""
        headers = request_headers(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    content=call.content,
                    headers=headers,
                )
            except httpx.TransportError as exc:
                wait = self.retry.after_error(call, exc, attempt)
                if wait is None:
                    raise TransportError(
                        f"{call.method} {call.path}: {exc.__class__.__name__}: {exc}",
                        attempts=attempt,
                    ) from exc
                await self._sleep(wait)
                continue
            wait = self.retry.after_status(call, response, attempt)
            if wait is not None:
                await self._sleep(wait)
                continue
            _calls.raise_for_problem(call, response, attempts=attempt)
            return call.parse(response)

    async def _pages(self, make: Callable[[str | None], Call[Page[T]]]) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await self.send(make(cursor))
            for item in page.items:
                yield item
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    # -- health ----------------------------------------------------------------------------

    async def health(self) -> bool:
        """`GET /healthz`: the process is up."""
        return await self.send(_calls.health())

    async def ready(self) -> Readiness:
        """`GET /readyz`: the database answers and is migrated (`.ok`), or why not."""
        return await self.send(_calls.ready())

    async def wait_ready(self, timeout: float = 60.0, poll: float = 0.5) -> Readiness:
        """Poll `/readyz` until it is ok; `TransportError`/`TimeoutError` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = await self.ready()
                if state.ok:
                    return state
                last = f"not ready: {state.database}"
            except TransportError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Vigil at {self.base_url} is not ready: {last}")
            await self._sleep(poll)

    async def openapi(self) -> dict[str, Any]:
        """The service's OpenAPI document (which operations this service has)."""
        return await self.send(_calls.openapi())

    # -- series ----------------------------------------------------------------------------

    async def create_series(
        self,
        *,
        name: str,
        channels: Sequence[str],
        window_size: int,
        stride: int,
        classes: Mapping[str, str] | None = None,
        threshold_quantile: float | None = None,
        training: Mapping[str, Any] | None = None,
        max_gap: float | None = None,
    ) -> Series:
        return await self.send(
            _calls.create_series(
                name=name,
                channels=channels,
                window_size=window_size,
                stride=stride,
                classes=classes,
                threshold_quantile=threshold_quantile,
                training=training,
                max_gap=max_gap,
            )
        )

    async def list_series(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Series]:
        return await self.send(_calls.list_series(limit=limit, cursor=cursor))

    def iter_series(self, *, page_size: int = 100) -> AsyncIterator[Series]:
        return self._pages(lambda c: _calls.list_series(limit=page_size, cursor=c))

    async def get_series(self, series_id: Id) -> Series:
        return await self.send(_calls.get_series(series_id))

    async def update_series(
        self,
        series_id: Id,
        *,
        classes: Mapping[str, str | None] | None = None,
        threshold_quantile: float | None = None,
        training: Mapping[str, Any] | None = None,
        max_gap: float | None = None,
        reset_max_gap: bool | None = None,
    ) -> Series:
        return await self.send(
            _calls.update_series(
                series_id,
                classes=classes,
                threshold_quantile=threshold_quantile,
                training=training,
                max_gap=max_gap,
                reset_max_gap=reset_max_gap,
            )
        )

    async def delete_series(self, series_id: Id) -> None:
        await self.send(_calls.delete_series(series_id))

    # -- points ----------------------------------------------------------------------------

    async def ingest_points(
        self, series_id: Id, timestamps: Sequence[Instant], values: Any
    ) -> IngestResult:
        """Rows of values (nested lists or a 2-D array), one per timestamp, in channel order."""
        return await self.send(
            _calls.ingest_points(series_id, timestamps=timestamps, values=values)
        )

    async def ingest_csv(self, series_id: Id, csv: str | bytes) -> IngestResult:
        """A CSV body: header `timestamp,<channel>,...`, then one row per line."""
        return await self.send(_calls.ingest_csv(series_id, csv))

    async def ingest_frame(
        self, series_id: Id, frame: Any, *, rows_per_request: int = _frames.MAX_CSV_ROWS
    ) -> IngestResult:
        """A pandas DataFrame with a DatetimeIndex and a column per channel (any order).

        Sent as CSV, `rows_per_request` rows a request; the counts are added up.
        """
        totals = {"received": 0, "inserted": 0, "updated": 0, "unchanged": 0}
        warnings: list[str] = []
        for body in _frames.frame_csv_chunks(frame, rows_per_request=rows_per_request):
            result = await self.ingest_csv(series_id, body)
            for name in totals:
                totals[name] += getattr(result, name)
            warnings.extend(result.warnings)
        return IngestResult(**totals, warnings=warnings)

    async def read_points(
        self,
        series_id: Id,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Points:
        """One page of stored points (`next_cursor` for the next; None where missing)."""
        return await self.send(
            _calls.read_points(series_id, start=start, end=end, limit=limit, cursor=cursor)
        )

    async def iter_point_pages(
        self,
        series_id: Id,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        page_size: int = 10_000,
    ) -> AsyncIterator[Points]:
        """Every page of stored points in [start, end]."""
        cursor: str | None = None
        while True:
            page = await self.read_points(
                series_id, start=start, end=end, limit=page_size, cursor=cursor
            )
            yield page
            cursor, start = _frames.next_points(page, page_size, start)
            if cursor is None and start is None:
                return

    async def read_frame(
        self,
        series_id: Id,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        page_size: int = 10_000,
    ) -> Any:
        """Every stored point in [start, end] as a DataFrame (UTC DatetimeIndex, a column per
        channel, NaN where a value is missing), read `page_size` points a request."""
        channels = (await self.get_series(series_id)).channels
        pages = [
            p
            async for p in self.iter_point_pages(
                series_id, start=start, end=end, page_size=page_size
            )
        ]
        return _frames.points_frame(pages, channels)

    # -- scoring ---------------------------------------------------------------------------

    async def score(
        self, series_id: Id, windows: Any, *, detail: str | None = None
    ) -> ScoreResponse:
        """Score windows (N, T, F). A numpy array goes as the binary body (float32), nested
        lists as JSON. `detail="steps"` adds per-step contributions."""
        if _frames._is_array(windows):
            return await self.send(_calls.score_array(series_id, windows, detail=detail))
        return await self.send(_calls.score_windows(series_id, windows, detail=detail))

    async def score_json(
        self, series_id: Id, windows: Any, *, detail: str | None = None
    ) -> ScoreResponse:
        """Score windows sent as JSON, whatever their type."""
        return await self.send(_calls.score_windows(series_id, windows, detail=detail))

    async def score_range(
        self,
        series_id: Id,
        *,
        start: Instant,
        end: Instant,
        detail: str | None = None,
        cursor: str | None = None,
    ) -> ScoreResponse:
        """Score the stored windows of [start, end]: one page (`next_cursor` for the next)."""
        return await self.send(
            _calls.score_range(series_id, start=start, end=end, detail=detail, cursor=cursor)
        )

    async def iter_score_range(
        self, series_id: Id, *, start: Instant, end: Instant, detail: str | None = None
    ) -> AsyncIterator[ScoreResult]:
        """Score every stored window of [start, end], page by page."""
        cursor: str | None = None
        while True:
            page = await self.score_range(
                series_id, start=start, end=end, detail=detail, cursor=cursor
            )
            for item in page.results:
                yield item
            if not page.next_cursor or not page.results:
                return
            cursor = page.next_cursor

    async def list_scores(
        self,
        series_id: Id,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[StoredScore]:
        return await self.send(
            _calls.list_scores(series_id, start=start, end=end, limit=limit, cursor=cursor)
        )

    def iter_scores(
        self,
        series_id: Id,
        *,
        start: Instant | None = None,
        end: Instant | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[StoredScore]:
        return self._pages(
            lambda c: _calls.list_scores(series_id, start=start, end=end, limit=page_size, cursor=c)
        )

    # -- labels ----------------------------------------------------------------------------

    async def label_range(
        self,
        series_id: Id,
        *,
        start: Instant,
        end: Instant,
        label: str,
        author: str | None = None,
        note: str | None = None,
        idempotency_key: str | None = None,
    ) -> LabelCreated:
        """Label the time range [start, end] of a series with one of its classes."""
        return await self.send(
            _calls.label_range(
                series_id,
                start=start,
                end=end,
                label=label,
                author=author,
                note=note,
                key=idempotency_key,
            )
        )

    async def label_score(
        self,
        score_id: str,
        *,
        label: str,
        series_id: Id | None = None,
        author: str | None = None,
        note: str | None = None,
        idempotency_key: str | None = None,
    ) -> LabelCreated:
        """Feedback on one scored window: `false_positive`, `false_negative` or a class."""
        return await self.send(
            _calls.label_score(
                score_id,
                label=label,
                series_id=series_id,
                author=author,
                note=note,
                key=idempotency_key,
            )
        )

    async def list_labels(
        self,
        *,
        series_id: Id | None = None,
        label: str | None = None,
        include_deleted: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Label]:
        return await self.send(
            _calls.list_labels(
                series_id=series_id,
                label=label,
                include_deleted=include_deleted,
                limit=limit,
                cursor=cursor,
            )
        )

    def iter_labels(
        self,
        *,
        series_id: Id | None = None,
        label: str | None = None,
        include_deleted: bool | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Label]:
        return self._pages(
            lambda c: _calls.list_labels(
                series_id=series_id,
                label=label,
                include_deleted=include_deleted,
                limit=page_size,
                cursor=c,
            )
        )

    async def get_label(self, label_id: Id) -> Label:
        return await self.send(_calls.get_label(label_id))

    async def delete_label(self, label_id: Id) -> None:
        await self.send(_calls.delete_label(label_id))

    # -- training, jobs, models ------------------------------------------------------------

    async def train(self, series_id: Id, *, idempotency_key: str | None = None) -> Job:
        """Queue a training job (or get the one already queued or running)."""
        return await self.send(_calls.train(series_id, key=idempotency_key))

    async def list_jobs(
        self,
        *,
        series_id: Id | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Job]:
        return await self.send(
            _calls.list_jobs(series_id=series_id, status=status, limit=limit, cursor=cursor)
        )

    def iter_jobs(
        self, *, series_id: Id | None = None, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Job]:
        return self._pages(
            lambda c: _calls.list_jobs(
                series_id=series_id, status=status, limit=page_size, cursor=c
            )
        )

    async def get_job(self, job_id: Id) -> Job:
        return await self.send(_calls.get_job(job_id))

    async def wait_for_job(
        self,
        job_id: Id,
        *,
        timeout: float = 600.0,
        poll: float = 1.0,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll a job until it has succeeded or failed (`JobFailed` unless told otherwise);
        `TimeoutError` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if job.done:
                if job.status == "failed" and raise_on_failure:
                    raise JobFailed(job)
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id} is still {job.status} after {timeout:g} s "
                    f"(progress {job.progress:.0%})"
                )
            await self._sleep(poll)

    async def list_models(
        self, series_id: Id, *, limit: int | None = None, cursor: str | None = None
    ) -> ModelVersions:
        """The series' model versions (a page of them) and which one is active."""
        return await self.send(_calls.list_models(series_id, limit=limit, cursor=cursor))

    async def iter_models(
        self, series_id: Id, *, page_size: int = 100
    ) -> AsyncIterator[ModelVersion]:
        cursor: str | None = None
        while True:
            page = await self.list_models(series_id, limit=page_size, cursor=cursor)
            for item in page.versions:
                yield item
            if not page.next_cursor or not page.versions:
                return
            cursor = page.next_cursor

    async def activate_model(self, series_id: Id, version: int) -> ModelVersion:
        return await self.send(_calls.activate_model(series_id, version))

    # -- alarms ----------------------------------------------------------------------------

    async def list_alarms(
        self,
        *,
        series_id: Id | None = None,
        status: str | None = None,
        since: Instant | None = None,
        until: Instant | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Alarm]:
        return await self.send(
            _calls.list_alarms(
                series_id=series_id,
                status=status,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )

    def iter_alarms(
        self,
        *,
        series_id: Id | None = None,
        status: str | None = None,
        since: Instant | None = None,
        until: Instant | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Alarm]:
        return self._pages(
            lambda c: _calls.list_alarms(
                series_id=series_id,
                status=status,
                since=since,
                until=until,
                limit=page_size,
                cursor=c,
            )
        )

    async def get_alarm(self, alarm_id: Id) -> AlarmDetail:
        return await self.send(_calls.get_alarm(alarm_id))

    async def alarm_verdict(
        self,
        alarm_id: Id,
        label: str,
        *,
        note: str | None = None,
        idempotency_key: str | None = None,
    ) -> Verdict:
        """An operator's verdict: `false_positive` (dismisses the alarm), or the anomaly class
        it caught (confirms it). It labels the alarm's span; one verdict per alarm."""
        return await self.send(
            _calls.alarm_verdict(alarm_id, label=label, note=note, key=idempotency_key)
        )

    async def acknowledge_alarm(self, alarm_id: Id, *, idempotency_key: str | None = None) -> Alarm:
        return await self.send(_calls.acknowledge_alarm(alarm_id, key=idempotency_key))

    async def watch_alarms(
        self,
        series_id: Id | None = None,
        poll: float = 2.0,
        *,
        since: Instant | None = None,
        include_existing: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[AlarmEvent]:
        """Yield alarms as they open (`type="opened"`) and change (`"changed"`), polling
        every `poll` seconds, until the caller stops or `timeout` seconds have passed.

        Alarms present at the first poll are not yielded unless `include_existing`; `since`
        keeps only alarms that end after it. After the first poll, each poll reads the list
        only down to the oldest alarm still without a verdict, so a quiet service costs one
        short request per poll.
        """
        watch = AlarmWatch(series_id=series_id, since=since, include_existing=include_existing)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            floor = watch.floor()
            alarms = []
            async for alarm in self.iter_alarms(**watch.query()):
                if watch.done(alarm, floor):
                    break
                alarms.append(alarm)
            for event in watch.absorb(alarms):
                yield event
            if deadline is not None and time.monotonic() + poll > deadline:
                return
            await self._sleep(poll)

    # -- webhooks --------------------------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        *,
        events: Sequence[str],
        secret: str | None = None,
        enabled: bool | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookCreated:
        """Subscribe `url` to events (`alarm.opened`, ...); without a `secret` the service
        makes one and returns it in `.secret`, this once."""
        return await self.send(
            _calls.create_webhook(
                url=url, events=events, secret=secret, enabled=enabled, key=idempotency_key
            )
        )

    async def get_webhook(self, webhook_id: Id) -> Webhook:
        return await self.send(_calls.get_webhook(webhook_id))

    async def list_webhooks(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Webhook]:
        return await self.send(_calls.list_webhooks(limit=limit, cursor=cursor))

    def iter_webhooks(self, *, page_size: int = 100) -> AsyncIterator[Webhook]:
        return self._pages(lambda c: _calls.list_webhooks(limit=page_size, cursor=c))

    async def delete_webhook(self, webhook_id: Id) -> None:
        await self.send(_calls.delete_webhook(webhook_id))

    async def list_deliveries(
        self,
        webhook_id: Id,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        return await self.send(
            _calls.list_deliveries(webhook_id, status=status, limit=limit, cursor=cursor)
        )

    def iter_deliveries(
        self, webhook_id: Id, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Delivery]:
        return self._pages(
            lambda c: _calls.list_deliveries(webhook_id, status=status, limit=page_size, cursor=c)
        )
