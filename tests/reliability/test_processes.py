"""Real processes: a worker killed mid-training, and an API stopped with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import JOB_RUNNING, JOB_SUCCEEDED, ModelVersion, ScoreRecord
from app.security import create_key
from app.training.worker import Worker
from tests.utils.proc import VIGIL, serve, vigil_env
from tests.utils.stream import create_series, insert_points, make_stream, windows_of
from tests.utils.trained import queue_job, read_job, trained_series

pytestmark = pytest.mark.slow


def test_a_worker_killed_mid_training_loses_nothing(
    sessions: sessionmaker[Session], settings: Settings, database_url: str
) -> None:
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(3000))
    job_id = queue_job(sessions, series_id)
    worker = subprocess.Popen(
        [*VIGIL, "worker"],
        env=vigil_env(
            database_url,
            VIGIL_JOB_LEASE_SECONDS="2",
            VIGIL_JOB_POLL_SECONDS="0.1",
            VIGIL_TRAIN_EPOCHS="1000",
            VIGIL_TRAIN_PATIENCE="1000",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = read_job(sessions, job_id)
            if job.status == JOB_RUNNING and job.progress > 0:
                break
            assert worker.poll() is None, "the worker exited early"
            time.sleep(0.1)
        else:
            pytest.fail("the worker never made progress")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    killed = read_job(sessions, job_id)
    assert killed.status == JOB_RUNNING and killed.lease_owner is not None
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0

    # Another worker takes the job over once the dead one's lease has run out.
    rescuer = Worker(settings.model_copy(update={"job_lease_seconds": 2.0}), sessions=sessions)
    deadline = time.monotonic() + 30
    while rescuer.run_once() is None:
        assert time.monotonic() < deadline, "the job was never released"
        time.sleep(0.2)
    job = read_job(sessions, job_id)
    assert job.status == JOB_SUCCEEDED
    assert job.attempts == 2
    with sessions() as session:
        versions = session.execute(select(ModelVersion.version, ModelVersion.status)).all()
    assert [tuple(v) for v in versions] == [(1, "active")]


def test_sigterm_finishes_requests_and_flushes_the_score_log(
    sessions: sessionmaker[Session], settings: Settings, database_url: str
) -> None:
    series_id, stream = trained_series(sessions, settings)
    windows = windows_of(stream, window_size=16, stride=8)
    with sessions() as session, session.begin():
        _, key = create_key(session=session, name="t", scopes=["score"])
    headers = {"Authorization": f"Bearer {key}"}
    # A flush interval far beyond the test: only the shutdown flush can write the rows.
    with serve(database_url, VIGIL_SCORE_LOG_FLUSH_SECONDS="3600") as (base, process):
        ids: list[str] = []
        for i in range(5):
            response = httpx.post(
                f"{base}/v1/score",
                json={"series_id": series_id, "windows": windows[i * 3 : i * 3 + 3].tolist()},
                headers=headers,
                timeout=30,
            )
            assert response.status_code == 200, response.text
            ids += [r["score_id"] for r in response.json()["results"]]
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(ScoreRecord)) == 0
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM is a clean stop.
        assert process.wait(30) in (0, -signal.SIGTERM)
    with sessions() as session:
        stored = {str(i) for i in session.scalars(select(ScoreRecord.id))}
    assert len(ids) == 15
    assert stored == set(ids)
