"""The `vigil` command line: migrate and key management against a real database."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.db.models import ModelVersion
from app.main import create_app
from app.security import hash_key
from app.worker import Worker
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
