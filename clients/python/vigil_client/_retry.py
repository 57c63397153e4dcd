"""When to send a request again, and after how long: the same for `Client` and `AsyncClient`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from vigil_client._calls import Call

__all__ = ["Retry"]

NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Failures before the request left: the service cannot have acted on it."""


@dataclass(frozen=True)
class Retry:
    """Retries of 429 and 503 answers and of connection failures, at most `attempts` sends.

    A `Retry-After` header is honoured (seconds or an HTTP date); an answer asking for longer
    than `max_retry_after` seconds is raised at once rather than waited for. Without the
    header, waits grow from `backoff` seconds, doubling up to `max_backoff`, with jitter.
    A connection that broke after the request was sent is retried only for requests that are
    safe to repeat (see `Call.replay_safe`); every POST carries one `Idempotency-Key` for all
    its attempts.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = frozenset({429, 503})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def after_status(self, call: Call[Any], response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give the answer back."""
        if not call.retry or attempt >= self.attempts:
            return None
        if response.status_code not in self.statuses or response.status_code in call.accept:
            return None
        header = retry_after_seconds(response.headers.get("retry-after"))
        if header is None:
            return self._backoff(attempt)
        if header > self.max_retry_after:
            return None
        return header

    def after_error(
        self, call: Call[Any], error: httpx.TransportError, attempt: int
    ) -> float | None:
        """Seconds to wait after a connection failure, or None to raise it."""
        if not call.retry or attempt >= self.attempts:
            return None
        if not isinstance(error, NEVER_SENT) and not call.replay_safe:
            return None
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
