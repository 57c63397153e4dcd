"""A per-key request limit that holds across every API process: a fixed one-minute
window counted in the database with one upsert per request."""

from __future__ import annotations

import time

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import RateWindow
from app.errors import RateLimited


def check_rate(*, session: Session, principal: str, limit: int, now: float | None = None) -> None:
    """Count this request (committing the session); raise RateLimited (429 with Retry-After)
    past `limit` requests a minute."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    insert = (
        postgresql.insert(RateWindow)
        if session.get_bind().dialect.name == "postgresql"
        else sqlite.insert(RateWindow)
    )
    statement = (
        insert.values(principal=principal, window_start=minute, count=1)
        .on_conflict_do_update(
            index_elements=[RateWindow.principal, RateWindow.window_start],
            set_={"count": RateWindow.count + 1},
        )
        .returning(RateWindow.count)
    )
    count = session.execute(statement).scalar_one()
    session.commit()
    if count > limit:
        retry_after = max(1, 60 - int(now % 60))
        raise RateLimited(
            f"this API key has made more than {limit} requests this minute",
            retry_after=retry_after,
        )


def purge_windows(*, session: Session, now: float | None = None) -> None:
    minute = int((time.time() if now is None else now) // 60)
    session.execute(delete(RateWindow).where(RateWindow.window_start < minute - 1))
