"""Running Alembic from Vigil itself: `vigil migrate`, start-up checks and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

import migrations
from app.db.session import make_engine


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


@cache
def head_revision() -> str | None:
    """The newest revision the code knows (read once per process)."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


NOT_MIGRATED = "database not migrated: run `vigil migrate`"


@dataclass(frozen=True)
class SchemaState:
    """Whether a database can be used as it is, and what to do when it cannot."""

    ready: bool
    reachable: bool
    problem: str | None = None


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases, in-memory ones and URIs)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database:
        return None
    if database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def schema_state(url: str) -> SchemaState:
    """Is the database at `url` migrated to the code's newest revision? Never creates it.

    Connecting to a SQLite file that does not exist would create it empty, so a missing file
    is reported without connecting.
    """
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return SchemaState(
            False, True, f"{NOT_MIGRATED} (there is no database at {path.resolve()})"
        )
    engine = make_engine(url, role="cli")
    try:
        current = current_revision(engine)
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return SchemaState(False, False, f"cannot reach the database: {reason}")
    finally:
        engine.dispose()
    head = head_revision()
    if current == head:
        return SchemaState(True, True)
    if current is None:
        return SchemaState(False, True, NOT_MIGRATED)
    if not _known(current):
        return SchemaState(
            False,
            True,
            f"the database is at migration {current}, which this Vigil does not know: "
            "it was migrated by a newer version",
        )
    return SchemaState(
        False,
        True,
        f"database not migrated to this version ({current}, needs {head}): run `vigil migrate`",
    )


def _known(revision: str) -> bool:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    try:
        return ScriptDirectory.from_config(config).get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False
