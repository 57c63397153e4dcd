"""A real `vigil serve` (SQLite, embedded training worker, bootstrap admin key) for the client's
tests, started once for the package; each test makes its own series."""

from __future__ import annotations

import secrets
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from vigil_client import Client

from tests.utils.proc import serve


@dataclass(frozen=True)
class LiveVigil:
    url: str
    key: str

    def client(self, **options: object) -> Client:
        return Client(self.url, api_key=self.key, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="package")
def live(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveVigil]:
    path = tmp_path_factory.mktemp("client") / "vigil.db"
    shutil.copy(sqlite_template, path)
    key = secrets.token_urlsafe(32)
    with serve(
        f"sqlite:///{path}",
        VIGIL_BOOTSTRAP_ADMIN_KEY=key,
        VIGIL_EMBEDDED_WORKER="true",
        VIGIL_TRAIN_MIN_STEPS="16",
        VIGIL_TRAIN_MAX_STEPS="40",
        VIGIL_TRAIN_MEMBERS="1",
        VIGIL_TRAIN_PATIENCE="3",
        VIGIL_TRAIN_THREADS="1",
        VIGIL_MIN_TRAIN_WINDOWS="4",
        VIGIL_RETRAIN_AFTER_LABELS="0",
        VIGIL_JOB_POLL_SECONDS="0.2",
        VIGIL_SCORE_LOG_FLUSH_SECONDS="0.2",
        VIGIL_DETECT_POLL_SECONDS="0.1",
        VIGIL_WEBHOOK_POLL_SECONDS="0.2",
    ) as (url, _process):
        yield LiveVigil(url=url, key=key)


@pytest.fixture
def vigil(live: LiveVigil) -> Iterator[Client]:
    with live.client() as client:
        yield client


def unique(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
