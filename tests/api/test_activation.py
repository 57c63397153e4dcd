"""Concurrent activations of one series' versions (issue 12, item 5): they take turns.

Sixteen clients activate versions of one series at once against a real `vigil serve`; each
gets 200 (or 409), never a 500 from the one-active-version index nor a 503 that blames the
database, and the series ends with exactly one active version.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import MODEL_ACTIVE, MODEL_CANDIDATE, ModelVersion
from app.security import create_key
from tests.utils.proc import serve
from tests.utils.stream import create_series

pytestmark = pytest.mark.slow

VERSIONS = 4
CLIENTS = 16


def _versions(sessions: sessionmaker[Session], series_id: int) -> None:
    """Versions 1 to VERSIONS, the first active; activation never reads the artifact."""
    with sessions() as session, session.begin():
        for number in range(1, VERSIONS + 1):
            session.add(
                ModelVersion(
                    series_id=series_id,
                    version=number,
                    status=MODEL_ACTIVE if number == 1 else MODEL_CANDIDATE,
                    artifact=b"unused",
                    sha256=hashlib.sha256(b"unused").hexdigest(),
                    metrics={},
                )
            )


def test_concurrent_activations_take_turns(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions)
    _versions(sessions, series_id)
    with sessions() as session, session.begin():
        _, plain = create_key(session=session, name="ops", scopes=["train", "read"])
    headers = {"Authorization": f"Bearer {plain}"}
    with (
        serve(database_url, VIGIL_SCORE_PROCESS="false") as (base, _process),
        httpx.Client(base_url=base, headers=headers, timeout=60) as client,
    ):

        def activate(i: int) -> httpx.Response:
            return client.post(f"/v1/series/{series_id}/models/{i % VERSIONS + 1}/activate")

        for _round in range(3):
            with ThreadPoolExecutor(CLIENTS) as pool:
                responses = list(pool.map(activate, range(CLIENTS)))
            statuses = sorted(r.status_code for r in responses)
            assert set(statuses) <= {200, 409}, [r.text for r in responses if r.status_code >= 500]
            with sessions() as session:
                active = session.scalars(
                    select(ModelVersion.version).where(
                        ModelVersion.series_id == series_id,
                        ModelVersion.status == MODEL_ACTIVE,
                    )
                ).all()
            assert len(active) == 1
            listed = client.get(f"/v1/series/{series_id}/models").json()
            assert listed["active_version"] == active[0]
