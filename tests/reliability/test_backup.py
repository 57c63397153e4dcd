"""Backup and restore as the README documents them: pg_dump, pg_restore, same scores."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.session import make_engine, make_sessionmaker
from app.main import create_app
from app.security import create_key
from tests.conftest import POSTGRES_ADMIN_URL, truncate_all
from tests.utils.stream import windows_of
from tests.utils.trained import trained_series

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _score(
    settings: Settings, headers: dict[str, str], series_id: int, windows: np.ndarray
) -> list[float]:
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/score", json={"series_id": series_id, "windows": windows.tolist()}, headers=headers
        )
    assert response.status_code == 200, response.text
    return [r["adjusted_score"] for r in response.json()["results"]]


def test_a_restored_dump_scores_the_same(postgres_url: str, tmp_path: Path) -> None:
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    # NOTE: the session's Postgres database is shared; start empty, so that the worker below
    # trains this test's job and not one another test left queued.
    truncate_all(postgres_url)
    settings = Settings(
        database_url=postgres_url, train_min_steps=16, train_max_steps=40, min_train_windows=4
    )
    sessions = make_sessionmaker(make_engine(settings.database_url, role="tests"))
    series_id, stream = trained_series(sessions, settings, name=f"backup-{uuid.uuid4().hex[:6]}")
    with sessions() as session, session.begin():
        _, key = create_key(session=session, name="backup", scopes=["score"])
    headers = {"Authorization": f"Bearer {key}"}
    windows = windows_of(stream, window_size=16, stride=8)[:6]
    before = _score(settings, headers, series_id, windows)

    libpq_url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    dump = tmp_path / "vigil.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", libpq_url], check=True)
    restored = f"vigil_restored_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{restored}"')
    try:
        restored_url = libpq_url.rsplit("/", 1)[0] + f"/{restored}"
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={restored_url}", str(dump)], check=True
        )
        restored_settings = settings.model_copy(
            update={"database_url": restored_url.replace("postgresql://", "postgresql+psycopg://")}
        )
        after = _score(restored_settings, headers, series_id, windows)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')
    assert after == before
