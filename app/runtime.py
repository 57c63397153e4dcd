"""What one API process holds for its lifetime, built at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, bindparam, or_, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Activations, ApiKey
from app.db.session import Limits, make_engine, make_sessionmaker, transaction
from app.detection.detector import DetectorPool
from app.errors import Forbidden
from app.metrics import DatabaseGauges
from app.scoring.batcher import MicroBatcher
from app.scoring.log import ScoreLog
from app.scoring.process import REPLY_TIMEOUT, ScorerProcess
from app.scoring.registry import ModelRegistry
from app.security import ensure_bootstrap_key, hash_key
from app.services.points import BulkTurns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """The live API key behind a request (never its secret)."""

    id: int
    name: str
    key_hash: str
    scopes: tuple[str, ...]
    series: frozenset[int] | None = None
    """The only series the key may use; None: every series."""

    def require_series(self, series_id: int) -> None:
        """403 unless the key may use series `series_id`."""
        if self.series is not None and series_id not in self.series:
            raise Forbidden(f"this API key may not use series {series_id}")

    def require_every_series(self, what: str) -> None:
        """403 for a key restricted to some series: `what` concerns every series."""
        if self.series is not None:
            raise Forbidden(f"this API key is restricted to certain series; {what}")


_PG_LIVE_KEYS = (
    "SELECT (SELECT generation FROM activations WHERE id = 1), "
    "id, name, key_hash, scopes, series_ids FROM api_keys "
    "WHERE key_hash = ANY(%s) AND revoked_at IS NULL "
    "AND (expires_at IS NULL OR expires_at > now())"
)
"""LIVE_KEYS for the asyncio psycopg connection (scopes is json: psycopg parses it)."""

LIVE_KEYS = select(
    select(Activations.generation).where(Activations.id == 1).scalar_subquery(),
    ApiKey.id,
    ApiKey.name,
    ApiKey.key_hash,
    ApiKey.scopes,
    ApiKey.series_ids,
).where(
    ApiKey.key_hash.in_(bindparam("digests", expanding=True)),
    ApiKey.revoked_at.is_(None),
    or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > bindparam("now")),
)
"""The live keys among the digests, each row with the activation generation. Built once:
constructing the statement cost more than running it on SQLite."""


class KeyLookup:
    """Checks presented API keys against the database, one query for concurrent requests.

    Every request's key is read from the database after the request arrived: a lookup that is
    already running never answers a request that came in after it started; that request
    waits for the next one. So a revoked key fails on its very next request, exactly as with
    one query per request, while a burst of N requests costs one query instead of N.

    The same query reads the activation generation (db/models.py Activations), so that by the
    time a request is authenticated, `generation` is at least what was committed when the
    request arrived: the model registry compares it before scoring (read-your-writes).

    On Postgres the query runs on the event loop itself, over an asyncio psycopg connection
    kept in autocommit: a thread would have to take the GIL back from the busy event loop
    three times per lookup (to send, to read the reply, to hand it over), each wait up to the
    interpreter's 5 ms switch interval, and requests wait for their lookup. SQLite has no
    asynchronous driver; its lookups run on a thread of their own.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-auth")
        self._waiting: dict[str, list[asyncio.Future[Principal | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._connection: Connection | None = None  # used only on the lookup thread
        self._postgres = engine.dialect.name == "postgresql"
        self._aconnection: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self.queries = 0
        self.generation = 0  # the newest activation generation a lookup has read

    async def authenticate(self, presented: str) -> Principal | None:
        """The live key matching `presented`, or None (unknown or revoked)."""
        digest = hash_key(presented)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Principal | None] = loop.create_future()
        self._waiting.setdefault(digest, []).append(future)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        principal = await future
        # NOTE: the row was found by its digest; the final decision is made in constant time.
        if principal is None or not hmac.compare_digest(principal.key_hash, digest):
            return None
        return principal

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                found = await self._lookup(list(batch))
            except Exception as exc:  # every waiting request sees the database error
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for digest, futures in batch.items():
                principal = found.get(digest)
                for future in futures:
                    if not future.done():
                        future.set_result(principal)

    async def _lookup(self, digests: list[str]) -> dict[str, Principal]:
        """The live keys among these digests, by digest."""
        if self._postgres:
            rows = await self._query_postgres(digests)
        else:
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(self._executor, self._query, digests)
        if rows and rows[0][0] is not None:
            self.generation = max(self.generation, int(rows[0][0]))
        wanted = set(digests)
        return {
            key_hash: Principal(
                key_id,
                name,
                key_hash,
                tuple(scopes),
                None if series is None else frozenset(series),
            )
            for _, key_id, name, key_hash, scopes, series in rows
            if key_hash in wanted
        }

    async def _query_postgres(self, digests: list[str]) -> list[tuple[Any, ...]]:
        """One round trip on the kept connection. A connection that broke is replaced once; a
        failure to connect, or a second failure, reaches the request as 503 (OperationalError)."""
        self.queries += 1
        for attempt in (1, 2):
            fresh = self._aconnection is None or self._aconnection.closed
            try:
                if fresh:
                    self._aconnection = await psycopg.AsyncConnection.connect(
                        self._conninfo(), autocommit=True, connect_timeout=5
                    )
                assert self._aconnection is not None
                cursor = await self._aconnection.execute(_PG_LIVE_KEYS, (digests,))
                return await cursor.fetchall()
            except psycopg.OperationalError as exc:
                await self._close_postgres()
                if fresh or attempt == 2:
                    raise OperationalError(_PG_LIVE_KEYS, None, exc) from exc
            except psycopg.Error as exc:
                raise DBAPIError(_PG_LIVE_KEYS, None, exc) from exc
        raise AssertionError("unreachable")

    def _conninfo(self) -> str:
        url = self._engine.url.set(drivername="postgresql")
        return (
            url.render_as_string(hide_password=False)
            + ("&" if url.query else "?")
            + "application_name=vigil.api.keys"
        )

    async def _close_postgres(self) -> None:
        connection, self._aconnection = self._aconnection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    def _query(self, digests: list[str]) -> list[tuple[Any, ...]]:
        """On the lookup thread, over a connection kept for it in autocommit: one round trip
        per lookup, where a pooled connection took three (the pool's liveness ping, the query,
        the rollback on release), each with SQLAlchemy's bookkeeping around it, on a thread
        that competes with the event loop for the GIL. Every query still reads what is
        committed now. A broken connection is replaced once, through the pool (which checks
        the new one); a second failure is the database's and reaches the request as 503."""
        self.queries += 1
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self._engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                )
            try:
                parameters = {"digests": digests, "now": utcnow()}
                return [tuple(row) for row in self._connection.execute(LIVE_KEYS, parameters)]
            except DBAPIError as exc:
                self._drop_connection()
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
        await self._close_postgres()
        # The connection is closed on its own thread, after any lookup still running there.
        self._executor.submit(self._drop_connection)
        self._executor.shutdown(wait=False)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: ModelRegistry
    batcher: MicroBatcher
    score_log: ScoreLog | None  # on the scoring thread; None when the scoring child keeps it
    keys: KeyLookup
    gauges: DatabaseGauges
    """The database gauges of /metrics (app/metrics.py)."""
    bulk: BulkTurns
    """Turns for big ingestion bodies (VIGIL_BULK_CONCURRENCY)."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    detector: DetectorPool | None = None
    """Scores what ingestion adds (app/detection/); None if VIGIL_DETECT_ENABLED=false."""

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url, role="api", limits=Limits.of(settings))
        sessions = make_sessionmaker(engine)
        scorer = score_log = None
        if settings.score_process:
            scorer = ScorerProcess(
                threads=settings.score_threads,
                cache_size=settings.model_cache_size,
                database_url=settings.database_url,
                flush_seconds=settings.score_log_flush_seconds,
                log_level=settings.log_level,
                log_format=settings.log_format,
            )
        else:
            score_log = ScoreLog(sessions)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            registry=ModelRegistry(sessions, cache_size=settings.model_cache_size),
            batcher=MicroBatcher(
                max_batch_size=settings.batch_max_size,
                max_wait=settings.batch_max_wait_ms / 1000.0,
                n_samples=settings.score_samples,
                max_piece_steps=settings.score_piece_steps,
                scorer=scorer,
                score_log=score_log,
            ),
            score_log=score_log,
            keys=KeyLookup(engine),
            gauges=DatabaseGauges(sessions),
            bulk=BulkTurns(
                concurrency=settings.bulk_concurrency,
                wait_seconds=settings.bulk_wait_seconds,
                min_bytes=settings.bulk_min_bytes,
            ),
            detector=(
                DetectorPool(settings, sessions=sessions) if settings.detect_enabled else None
            ),
        )

    def flush_scores(self) -> int:
        """Write the scored windows this API process holds, from a thread (not the event
        loop's): feedback on a score made a moment ago must find it."""
        if self.score_log is not None:
            return self.score_log.flush()
        assert self.batcher.scorer is not None and self.loop is not None
        flushed = asyncio.run_coroutine_threadsafe(self.batcher.scorer.flush(), self.loop)
        return flushed.result(REPLY_TIMEOUT)

    async def start(self) -> None:
        import torch

        torch.set_num_threads(self.settings.score_threads)
        if self.batcher.scorer is not None:
            await self.batcher.scorer.start()
        try:
            with transaction(self.sessions) as session:
                if ensure_bootstrap_key(session=session, key=self.settings.bootstrap_admin_key):
                    log.info("created the bootstrap admin key")
            await asyncio.to_thread(self.registry.refresh)
        except Exception as exc:  # the database may come later; /readyz reports it
            log.warning("start-up database access failed: %s", exc.__class__.__name__)
        # NOTE: everything alive now (modules, the app, torch) lives as long as the process;
        # freezing it keeps the collector from walking it again on every full collection.
        gc.collect()
        gc.freeze()
        self.loop = loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.registry.poll(self.settings.model_poll_seconds)))
        self.tasks.append(loop.create_task(self.gauges.poll()))
        if self.score_log is not None:
            self.tasks.append(
                loop.create_task(self.score_log.run(self.settings.score_log_flush_seconds))
            )
        if self.detector is not None:
            self.detector.start()

    async def stop(self) -> None:
        if self.detector is not None:
            await asyncio.to_thread(self.detector.stop)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.batcher.close()  # a scoring child writes its scores as it exits
        await self.keys.close()
        if self.score_log is not None:
            try:
                await asyncio.to_thread(self.score_log.flush)
            except Exception as exc:
                log.error(
                    "could not flush %d scored windows at shutdown: %s",
                    self.score_log.pending,
                    exc.__class__.__name__,
                )
        self.engine.dispose()
