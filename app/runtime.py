"""What one API process holds for its lifetime, built at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import make_engine, make_sessionmaker, transaction
from app.scoring import MicroBatcher, ModelRegistry, ScoreLog
from app.security import ensure_bootstrap_key

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: ModelRegistry
    batcher: MicroBatcher
    score_log: ScoreLog
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url, role="api")
        sessions = make_sessionmaker(engine)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            registry=ModelRegistry(sessions, cache_size=settings.model_cache_size),
            batcher=MicroBatcher(
                max_batch_size=settings.batch_max_size,
                max_wait=settings.batch_max_wait_ms / 1000.0,
                n_samples=settings.score_samples,
            ),
            score_log=ScoreLog(sessions),
        )

    async def start(self) -> None:
        import torch

        torch.set_num_threads(self.settings.score_threads)
        try:
            with transaction(self.sessions) as session:
                if ensure_bootstrap_key(session=session, key=self.settings.bootstrap_admin_key):
                    log.info("created the bootstrap admin key")
            await asyncio.to_thread(self.registry.refresh)
        except Exception as exc:  # the database may come later; /readyz reports it
            log.warning("start-up database access failed: %s", exc.__class__.__name__)
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.registry.poll(self.settings.model_poll_seconds)))
        self.tasks.append(
            loop.create_task(self.score_log.run(self.settings.score_log_flush_seconds))
        )

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.batcher.close()
        try:
            await asyncio.to_thread(self.score_log.flush)
        except Exception as exc:
            log.error(
                "could not flush %d scored windows at shutdown: %s",
                self.score_log.pending,
                exc.__class__.__name__,
            )
        self.engine.dispose()
