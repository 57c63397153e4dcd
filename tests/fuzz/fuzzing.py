"""What the fuzz tests share with `benchmarks/fuzz/run.py`: the app's OpenAPI document as a
Schemathesis schema, seed data for generated ids to find, a watch on the database that shows
a rejected request wrote nothing, and the known issues of code owned elsewhere."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import schemathesis
from schemathesis import GenerationMode
from schemathesis.python import asgi
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import JOB_QUEUED, JOB_RUNNING, Base, Job, Label, Series
from app.main import create_app
from app.security import create_key
from app.training.jobs import enqueue_training
from tests.utils.stream import T0_US, create_series, insert_points, make_stream

NOT_COMPARED: Final = frozenset({"idempotency_keys", "rate_limits", "detect_state"})
"""Tables a rejected request may write by design: the idempotency draft remembers a 4xx
response so that a retry gets it again, and the rate limit counts every request. The
detector's work queue changes in the background, whenever it takes up points an earlier
request ingested."""

PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})


def load_schema() -> Any:
    """The app's own OpenAPI document, fuzzed with valid and invalid input.

    The document does not depend on the database, so an app that is never started gives it;
    each call goes to an app of the caller's (`app=`), and the schema only needs to know that
    the transport is ASGI.
    """
    document_app = create_app(Settings(database_url="sqlite://"))
    schema = schemathesis.openapi.from_dict(document_app.openapi())
    schema.app = document_app
    schema.config.update(base_url=f"http://{asgi.HOST}")
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        # Unknown query parameters are ignored, as most HTTP APIs do: not invalid input.
        allow_extra_parameters=False,
        # The key is the caller's (an admin key, or none); the generator leaves it alone.
        with_security_parameters=False,
    )
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    return schema


def seed(sessions: sessionmaker[Session]) -> dict[str, str]:
    """Series 1 (points, a label, a queued job) and series 2, so that the small ids the
    generator likes find something; returns the headers of an admin key."""
    first = create_series(sessions, name="pump-1")
    create_series(sessions, name="pump-2", channels=2, window_size=8, stride=4)
    insert_points(sessions, first, make_stream(64))
    with sessions() as session, session.begin():
        session.add(Label(series_id=first, start_ts=T0_US, end_ts=T0_US + 10**7, label="anomaly"))
        series = session.get(Series, first)
        assert series is not None
        enqueue_training(session=session, series=series, reason="manual")
        _, key = create_key(session=session, name="fuzz-admin", scopes=["admin"])
    return {"Authorization": f"Bearer {key}"}


def close_open_jobs(sessions: sessionmaker[Session]) -> None:
    """Leave no queued or running job behind in the shared test database: a later test that
    runs a worker once would train it instead of its own."""
    with sessions() as session, session.begin():
        session.execute(delete(Job).where(Job.status.in_((JOB_QUEUED, JOB_RUNNING))))


def digest(sessions: sessionmaker[Session]) -> dict[str, str]:
    """A SHA-256 of the rows of every compared table, in primary-key order."""
    out: dict[str, str] = {}
    with sessions() as session:
        for table in Base.metadata.sorted_tables:
            if table.name in NOT_COMPARED:
                continue
            rows = session.execute(select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()
    return out


@dataclass
class DatabaseWatch:
    """Follows the database from response to response: one digest per request.

    `settle()` writes what the app buffers (scored windows) and reads the digest; after a
    rejected request, `changed()` names the tables that differ from the last settled state.
    """

    sessions: sessionmaker[Session]
    flush: Callable[[], object]
    last: dict[str, str] = field(default_factory=dict)

    def settle(self) -> dict[str, str]:
        self.flush()
        self.last = digest(self.sessions)
        return self.last

    def changed(self) -> list[str]:
        before = self.last
        now = self.settle()
        return sorted(name for name, value in now.items() if before.get(name) != value)


@dataclass(frozen=True)
class KnownIssue:
    """A failure found by fuzzing in code this suite does not own, reported to its owner.
    Cases it matches are not sent by `make test`; `benchmarks/fuzz/run.py` sends them."""

    operation: str
    description: str
    matches: Callable[[Any], bool]


KNOWN_ISSUES: Final[tuple[KnownIssue, ...]] = ()
"""None open. The first, a series_id beyond 32 bits reaching SQL from POST /v1/score (a 500 on
Postgres), was fixed in app/schemas/score_codecs.py."""


def known_issue(case: Any) -> KnownIssue | None:
    label = f"{case.operation.method.upper()} {case.operation.path}"
    return next((i for i in KNOWN_ISSUES if i.operation == label and i.matches(case)), None)


def describe(case: Any, response: Any) -> str:
    return f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
