"""A per-key request limit that holds across every API process: GCRA (the generic cell rate
algorithm, a token bucket kept as one timestamp per key) in the database, one upsert per
request.

A key may send a burst of up to `limit` requests, then one every 60 / `limit` seconds; an
idle key earns its burst back at that pace. A fixed one-minute window (what came before)
let 2 × `limit` through in a second across a minute boundary: the full count just before it
and again just after.
"""

from __future__ import annotations

import math
import time

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import RateLimit
from app.errors import RateLimited

MICROS = 1_000_000
PERIOD_US = 60 * MICROS


def check_rate(*, session: Session, principal: str, limit: int, now: float | None = None) -> None:
    """Count this request (committing the session); raise RateLimited (429 with Retry-After)
    when the key has no allowance left. A refused request is not counted."""
    now_us = int((time.time() if now is None else now) * MICROS)
    interval = PERIOD_US // limit  # the pace: one request per interval
    tolerance = PERIOD_US - interval  # how far ahead of the pace a burst may run
    postgres = session.get_bind().dialect.name == "postgresql"
    insert = postgresql.insert(RateLimit) if postgres else sqlite.insert(RateLimit)
    greatest = func.greatest if postgres else func.max  # SQLite's max() of two is a scalar
    # The theoretical arrival time: when the key's allowance would be back to full.
    tat = greatest(RateLimit.tat, now_us)
    statement = (
        insert.values(principal=principal, tat=now_us + interval)
        .on_conflict_do_update(
            index_elements=[RateLimit.principal],
            set_={"tat": tat + interval},
            where=tat - now_us <= tolerance,
        )
        .returning(RateLimit.tat)
    )
    admitted = session.execute(statement).scalar_one_or_none()
    session.commit()
    if admitted is not None:
        return
    current = session.scalar(select(RateLimit.tat).where(RateLimit.principal == principal))
    wait_us = max(0, (current or now_us) - now_us - tolerance)
    raise RateLimited(
        f"this API key has used its allowance of {limit} requests a minute; "
        f"it regains one every {interval / MICROS:g} s",
        retry_after=max(1, math.ceil(wait_us / MICROS)),
    )


def purge_windows(*, session: Session, now: float | None = None) -> None:
    """Forget keys whose allowance is full again: a missing row means the same."""
    now_us = int((time.time() if now is None else now) * MICROS)
    session.execute(delete(RateLimit).where(RateLimit.tat < now_us))
