"""Only Alembic creates the schema: it must go up and down, and match the ORM exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.db import migrate
from app.db.models import Base
from app.db.session import make_engine


def test_upgrade_head_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url, role="tests")
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_back(database_url: str) -> None:
    engine = make_engine(database_url, role="tests")
    migrate.downgrade(database_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(database_url)
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= tables
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
