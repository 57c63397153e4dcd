"""Retention: old rows deleted by the worker's housekeeping, a bounded batch at a time.

Each table's rule is one entry of RETENTION: the table, the column that says how old a row is
(µs since the epoch, or a UTC datetime), and the setting that says how old is too old (None:
kept forever). Rows go in batches of VIGIL_RETENTION_BATCH_ROWS, each batch its own short
transaction, so that retention never holds a long lock on a table that ingestion or scoring
writes to. A table keyed by (series_id, time) is swept series by series, along its primary key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import Base, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    table: str
    """The table's name in the schema."""
    column: str
    """The column that says how old a row is."""
    days: Callable[[Settings], float | None]
    """How many days a row is kept (None: forever), from the settings."""
    epoch_us: bool = False
    """The column holds microseconds since the epoch (sensor time) rather than a datetime."""
    per_series: bool = False
    """The primary key is (series_id, column): sweep one series at a time along it."""


RETENTION: tuple[Retention, ...] = (
    Retention("points", "ts", lambda s: s.points_retention_days, epoch_us=True, per_series=True),
    Retention("scores", "created_at", lambda s: s.score_retention_hours / 24),
    Retention(
        "window_scores",
        "start_ts",
        lambda s: s.scores_retention_days,
        epoch_us=True,
        per_series=True,
    ),
    Retention("alarms", "end_ts", lambda s: s.alarms_retention_days, epoch_us=True),
)
"""One entry per table with a retention; adding a table is adding a line."""


def enforce_retention(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    now: datetime | None = None,
    rules: Sequence[Retention] = RETENTION,
) -> dict[str, int]:
    """Delete the rows older than each rule's retention; rows deleted per table."""
    now = now or utcnow()
    deleted: dict[str, int] = {}
    for rule in rules:
        days = rule.days(settings)
        if days is None:
            continue
        table = Base.metadata.tables[rule.table]
        cutoff_at = now - timedelta(days=days)
        cutoff: int | datetime = (
            int(cutoff_at.timestamp() * 1_000_000) if rule.epoch_us else cutoff_at
        )
        deleted[rule.table] = _sweep(
            sessions, table, rule, cutoff, batch_rows=settings.retention_batch_rows
        )
        if deleted[rule.table]:
            log.info("retention: deleted %d rows of %s", deleted[rule.table], rule.table)
    return deleted


def _sweep(
    sessions: sessionmaker[Session],
    table: Table,
    rule: Retention,
    cutoff: int | datetime,
    *,
    batch_rows: int,
) -> int:
    age = table.c[rule.column]
    key = list(table.primary_key.columns)
    if rule.per_series:
        with sessions() as session:
            series = list(session.scalars(select(Base.metadata.tables["series"].c.id)))
        scopes = [table.c.series_id == series_id for series_id in series]
    else:
        scopes = [age.is_not(None)]
    total = 0
    for scope in scopes:
        while True:
            oldest = select(*key).where(scope, age < cutoff).order_by(age).limit(batch_rows)
            if len(key) == 1:
                statement = delete(table).where(key[0].in_(oldest.scalar_subquery()))
            else:
                statement = delete(table).where(tuple_(*key).in_(oldest))
            with sessions() as session, session.begin():
                removed = int(session.execute(statement).rowcount)  # type: ignore[attr-defined]
            total += removed
            if removed < batch_rows:
                break
    return total
