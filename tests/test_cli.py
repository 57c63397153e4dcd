"""The `vigil` command line: migrate and key management against a real database."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.cli import _announce, cli
from app.config import Settings
from app.db.models import ModelVersion
from app.main import create_app
from app.security import create_key, hash_key
from app.training.worker import Worker
from tests.conftest import POSTGRES_ADMIN_URL
from tests.utils.trained import NoHeartbeat, queue_job, trained_series


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, database_url: str) -> CliRunner:
    monkeypatch.setenv("VIGIL_DATABASE_URL", database_url)
    return CliRunner()


def test_migrate_is_idempotent(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "newest migration" in result.output


def test_keys_create_list_revoke(runner: CliRunner, settings: Settings) -> None:
    created = runner.invoke(
        cli, ["keys", "create", "--name", "gateway", "--scopes", "ingest,score"]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("vgl_") and len(key) > 40

    listed = runner.invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0
    line = next(row for row in listed.stdout.splitlines() if "gateway" in row)
    assert "ingest,score" in line and "active" in line
    assert key not in listed.stdout and hash_key(key) not in listed.stdout  # never the secret
    key_id = line.split("\t")[0]

    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/series", headers=headers).status_code == 403  # no read scope
        assert client.post("/v1/series/1/train", headers=headers).status_code == 403
        revoked = runner.invoke(cli, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0, revoked.output
        assert client.post("/v1/score", json={}, headers=headers).status_code == 401


def test_unknown_scopes_are_refused(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["keys", "create", "--name", "x", "--scopes", "read,root"])
    assert result.exit_code == 2
    assert "unknown scope(s) root" in result.stderr
    missing = runner.invoke(cli, ["keys", "revoke", "999"])
    assert missing.exit_code == 2
    assert "API key 999 does not exist" in missing.stderr


def test_keys_can_expire(runner: CliRunner, settings: Settings) -> None:
    created = runner.invoke(
        cli, ["keys", "create", "--name", "contractor", "--scopes", "read", "--expires-in", "2h"]
    )
    assert created.exit_code == 0, created.output
    assert "expires=" in created.stderr
    key = created.stdout.strip().splitlines()[-1]
    listed = runner.invoke(cli, ["keys", "list"])
    line = next(row for row in listed.stdout.splitlines() if "contractor" in row)
    assert "active, expires " in line
    with TestClient(create_app(settings)) as client:
        assert (
            client.get("/v1/series", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
    refused = runner.invoke(
        cli, ["keys", "create", "--name", "x", "--scopes", "read", "--expires-in", "2 weeks"]
    )
    assert refused.exit_code == 2
    assert "is not a duration" in refused.stderr


def test_keys_can_be_restricted_to_series(runner: CliRunner, settings: Settings) -> None:
    created = runner.invoke(
        cli, ["keys", "create", "--name", "pump-7-gateway", "--scopes", "read", "--series", "7,3"]
    )
    assert created.exit_code == 0, created.output
    assert "series=3,7" in created.stderr
    key = created.stdout.strip().splitlines()[-1]
    listed = runner.invoke(cli, ["keys", "list"])
    line = next(row for row in listed.stdout.splitlines() if "pump-7-gateway" in row)
    assert "series 3,7 only" in line
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/series/1", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert "may not use series 1" in response.json()["detail"]
    refused = runner.invoke(
        cli, ["keys", "create", "--name", "x", "--scopes", "read", "--series", "one"]
    )
    assert refused.exit_code == 2
    assert "comma-separated list of series ids" in refused.stderr


def test_models_list_and_promote_a_candidate_by_hand(
    runner: CliRunner, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    series_id, _ = trained_series(sessions, settings)
    job_id = queue_job(sessions, series_id)
    worker = Worker(settings, sessions=sessions)
    claimed = worker.claim()
    assert claimed is not None and claimed.job_id == job_id
    outcome = worker._train(claimed, heartbeat=NoHeartbeat())
    worker._store(claimed, dataclasses.replace(outcome, activate=False, note="kept as candidate"))
    listed = runner.invoke(cli, ["models", "list", str(series_id)])
    assert listed.exit_code == 0, listed.output
    lines = [line.split("\t") for line in listed.output.strip().splitlines()]
    assert [(line[0], line[1]) for line in lines] == [("1", "active"), ("2", "candidate")]
    assert lines[1][3] == "kept as candidate"
    promoted = runner.invoke(cli, ["models", "activate", str(series_id), "2"])
    assert promoted.exit_code == 0, promoted.output
    assert "version 2 is active" in promoted.output
    with sessions() as session:
        statuses = dict(session.execute(select(ModelVersion.version, ModelVersion.status)).all())
    assert statuses == {1: "retired", 2: "active"}
    missing = runner.invoke(cli, ["models", "activate", str(series_id), "9"])
    assert missing.exit_code == 2 and "no model version 9" in missing.output


@pytest.fixture
def unmigrated_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """An existing database that has no schema yet, of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "empty.db"
        sqlite3.connect(path).close()
        yield f"sqlite:///{path}"
        return
    name = f"vigil_test_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


NOT_MIGRATED = "database not migrated: run `vigil migrate`"
COMMANDS_THAT_NEED_THE_SCHEMA = [
    ["keys", "list"],
    ["keys", "create", "--name", "me", "--scopes", "admin"],
    ["keys", "revoke", "1"],
    ["worker"],
]


@pytest.mark.parametrize("command", COMMANDS_THAT_NEED_THE_SCHEMA, ids=" ".join)
def test_from_another_directory_commands_say_to_migrate_and_create_no_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    monkeypatch.delenv("VIGIL_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1
    assert NOT_MIGRATED in result.stderr
    assert str(tmp_path / "vigil.db") in result.stderr  # says where it looked
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS_THAT_NEED_THE_SCHEMA, ids=" ".join)
def test_an_unmigrated_database_is_named_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, unmigrated_url: str, command: list[str]
) -> None:
    monkeypatch.setenv("VIGIL_DATABASE_URL", unmigrated_url)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {NOT_MIGRATED}"
    assert "Traceback" not in result.output


def test_migrate_then_keys_work(monkeypatch: pytest.MonkeyPatch, unmigrated_url: str) -> None:
    monkeypatch.setenv("VIGIL_DATABASE_URL", unmigrated_url)
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    listed = runner.invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout == ""


def test_serve_announces_its_urls_and_how_to_get_a_key(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.cli")
    _announce(Settings(database_url=database_url, host="0.0.0.0", port=8123))
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == (
        "Vigil API at http://127.0.0.1:8123, interactive docs at http://127.0.0.1:8123/docs"
    )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "no API key exists" in warning
    assert "VIGIL_BOOTSTRAP_ADMIN_KEY" in warning and "vigil keys create" in warning


def test_serve_is_quiet_about_keys_once_one_will_exist(
    database_url: str, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.cli")
    _announce(Settings(database_url=database_url, bootstrap_admin_key="k" * 32))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with sessions() as session, session.begin():
        create_key(session=session, name="ops", scopes=["read"])
    caplog.clear()
    _announce(Settings(database_url=database_url))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_serve_warns_of_a_short_bootstrap_key_in_development(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _announce(Settings(database_url=database_url, bootstrap_admin_key="short-key"))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "shorter than 24 characters" in warning and "production" in warning


def test_serve_says_when_the_database_is_not_migrated(
    unmigrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _announce(Settings(database_url=unmigrated_url))
    assert NOT_MIGRATED in [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
