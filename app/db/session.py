"""Engines and sessions: one engine per process role, named in `pg_stat_activity`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from app.config import Settings


@dataclass(frozen=True)
class Limits:
    """How long the API's database work may wait (app/config.py `db_*`); see `make_engine`."""

    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout: float = 10.0
    lock_timeout: float | None = None
    """Seconds; None: Postgres' default (wait forever)."""
    statement_timeout: float | None = None

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
            lock_timeout=settings.db_lock_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
        )


def make_engine(url: str, *, role: str, limits: Limits | None = None) -> Engine:
    """An engine for `role` (`api`, `worker`, `cli`) with health-checked pooled connections.

    With `limits` (the API's), every Postgres connection gets its `lock_timeout` and
    `statement_timeout` at connect time, and a request waits at most `pool_timeout` for a
    connection: each then fails fast (app/errors.py `busy_error`: 503 "busy, retry") instead
    of queueing behind other writers for minutes.
    """
    limits = limits or Limits()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # NOTE: the API serves from a thread pool, so SQLite connections cross threads; WAL
        # lets readers and the single writer proceed together, busy_timeout queues writers.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"application_name": f"vigil.{role}", "connect_timeout": 5}
    options = [
        f"-c {name}={round(seconds * 1000)}"
        for name, seconds in (
            ("lock_timeout", limits.lock_timeout),
            ("statement_timeout", limits.statement_timeout),
        )
        if seconds is not None
    ]
    if options:
        connect_args["options"] = " ".join(options)
    kwargs["connect_args"] = connect_args
    kwargs["pool_size"] = limits.pool_size
    kwargs["max_overflow"] = limits.max_overflow
    kwargs["pool_timeout"] = limits.pool_timeout
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any exception."""
    with factory() as session, session.begin():
        yield session
