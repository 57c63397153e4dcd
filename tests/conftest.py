"""Databases for the tests: a throw-away Postgres database and SQLite files, both built by
`alembic upgrade head` so that every run tests the migrations too.

Postgres is the machine's server at 127.0.0.1:5432 (override with VIGIL_TEST_POSTGRES_URL).
When it is unreachable the Postgres tests skip and say why, except under CI=true, where
that fails the run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import migrate
from app.db.models import Base
from app.db.session import make_engine, make_sessionmaker
from app.main import create_app
from app.security import create_key

POSTGRES_ADMIN_URL = os.environ.get(
    "VIGIL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_unavailable_reason() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}".strip()
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated throw-away database on the shared server, dropped after the session."""
    reason = _postgres_unavailable_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true requires PostgreSQL)")
        pytest.skip(reason)
    name = f"vigil_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    migrate.upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def truncate_all(url: str) -> None:
    engine = make_engine(url, role="tests")
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        # The one row that the migrations seed (db/models.py Activations).
        connection.execute(text("INSERT INTO activations (id, generation) VALUES (1, 0)"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """An empty, migrated database: each test runs once on SQLite and once on Postgres."""
    if request.param == "sqlite":
        path = tmp_path / "vigil.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_url")
    truncate_all(url)
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, role="tests")
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        embedded_worker=False,
        # Each app would start a scoring child (~2 s of torch import): the tests score on a
        # thread, except tests/scoring/test_scorer.py, which run the child.
        score_process=False,
        bootstrap_admin_key=None,
        log_format="text",
        model_poll_seconds=0.2,
        score_log_flush_seconds=0.1,
        train_min_steps=16,
        train_max_steps=40,
        train_members=1,
        train_patience=3,
        min_train_windows=4,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real app (lifespan included) on the test database, driven in-process."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def make_headers(sessions: sessionmaker[Session]) -> Callable[..., dict[str, str]]:
    """`make_headers("read", "ingest")` -> Authorization headers for a new key with those scopes."""

    def make(*scopes: str, name: str = "test") -> dict[str, str]:
        with sessions() as session, session.begin():
            _, plain = create_key(session=session, name=name, scopes=scopes or ("admin",))
        return {"Authorization": f"Bearer {plain}"}

    return make


@pytest.fixture
def admin(make_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_headers("admin", name="admin")
