"""The training worker against a real database: claiming, leases, retries, activation."""

from __future__ import annotations

import dataclasses
import os
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import (
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    Job,
    ModelVersion,
)
from app.training.pipeline import decide_activation, decide_feedback_activation
from app.training.worker import LeaseLost, Worker
from tests.utils.stream import create_series, insert_points, make_stream
from tests.utils.trained import NoHeartbeat, queue_job, read_job


@pytest.fixture
def series_id(sessions: sessionmaker[Session]) -> int:
    sid = create_series(sessions)
    insert_points(sessions, sid, make_stream(400))
    return sid


def test_a_second_request_gets_the_open_job(
    sessions: sessionmaker[Session], series_id: int
) -> None:
    first = queue_job(sessions, series_id)
    assert queue_job(sessions, series_id) == first
    with sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 1


def test_worker_trains_stores_and_activates(
    sessions: sessionmaker[Session], settings: Settings, series_id: int
) -> None:
    job_id = queue_job(sessions, series_id)
    worker = Worker(settings, sessions=sessions)
    assert worker.run_once() == job_id
    job = read_job(sessions, job_id)
    assert job.status == JOB_SUCCEEDED
    assert job.progress == 1.0
    assert job.model_version == 1
    assert job.metrics is not None and job.metrics["activated"] is True
    assert job.metrics["train_windows"] > 0 and job.metrics["validation_windows"] > 0
    assert job.lease_owner is None
    with sessions() as session:
        versions = session.scalars(select(ModelVersion)).all()
    assert [(v.version, v.status) for v in versions] == [(1, "active")]
    assert len(versions[0].sha256) == 64
    assert worker.run_once() is None  # nothing left in the queue


def test_retrain_warm_starts_and_retires_the_previous_version(
    sessions: sessionmaker[Session], settings: Settings, series_id: int
) -> None:
    worker = Worker(settings.model_copy(update={"activation_tolerance": 10.0}), sessions=sessions)
    queue_job(sessions, series_id)
    worker.run_once()
    queue_job(sessions, series_id)
    worker.run_once()
    with sessions() as session:
        rows = session.execute(
            select(ModelVersion.version, ModelVersion.status).order_by(ModelVersion.version)
        ).all()
    assert [tuple(r) for r in rows] == [(1, "retired"), (2, "active")]


def test_too_little_data_fails_the_job_with_a_clear_error(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    sid = create_series(sessions, name="tiny")
    insert_points(sessions, sid, make_stream(20))
    job_id = queue_job(sessions, sid)
    Worker(settings, sessions=sessions).run_once()
    job = read_job(sessions, job_id)
    assert job.status == JOB_FAILED
    assert job.error is not None and "tiny" in job.error and "ingest more points" in job.error


def test_two_workers_never_claim_the_same_job(
    sessions: sessionmaker[Session], settings: Settings, series_id: int
) -> None:
    queue_job(sessions, series_id)
    workers = [Worker(settings, sessions=sessions, name=f"w{i}") for i in range(4)]
    barrier = threading.Barrier(len(workers))
    claims: list[object] = []

    def grab(worker: Worker) -> None:
        barrier.wait()
        claims.append(worker.claim())

    threads = [threading.Thread(target=grab, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [c for c in claims if c is not None]
    assert len(won) == 1


def test_an_expired_lease_is_claimed_again_and_the_old_worker_loses_its_result(
    sessions: sessionmaker[Session], settings: Settings, series_id: int
) -> None:
    job_id = queue_job(sessions, series_id)
    dead = Worker(settings, sessions=sessions, name="dead")
    claimed = dead.claim()
    assert claimed is not None and claimed.attempt == 1
    live = Worker(settings, sessions=sessions, name="live")
    assert live.claim() is None  # the lease still holds
    with sessions() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    again = live.claim()
    assert again is not None and again.job_id == job_id and again.attempt == 2
    assert read_job(sessions, job_id).lease_owner == "live"
    # The dead worker wakes up: its result must not be stored.
    outcome = dead._train(claimed, heartbeat=NoHeartbeat())
    with pytest.raises(LeaseLost):
        dead._store(claimed, outcome)
    live.execute(again)
    job = read_job(sessions, job_id)
    assert job.status == JOB_SUCCEEDED and job.model_version == 1


def test_a_job_abandoned_too_often_fails(
    sessions: sessionmaker[Session], settings: Settings, series_id: int
) -> None:
    job_id = queue_job(sessions, series_id)
    with sessions() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JOB_RUNNING,
                attempts=settings.job_max_attempts,
                lease_owner="gone",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    assert Worker(settings, sessions=sessions).claim() is None
    job = read_job(sessions, job_id)
    assert job.status == JOB_FAILED
    assert job.error is not None and "stopped responding" in job.error


def test_stopping_hands_the_job_back(
    sessions: sessionmaker[Session], settings: Settings, series_id: int
) -> None:
    job_id = queue_job(sessions, series_id)
    worker = Worker(settings, sessions=sessions)
    worker.stop_event.set()  # as SIGTERM does: stop at the next epoch boundary
    worker.run_once()
    job = read_job(sessions, job_id)
    assert job.status == JOB_QUEUED
    assert job.attempts == 0 and job.lease_owner is None
    with sessions() as session:
        assert session.scalars(select(ModelVersion)).all() == []


def test_the_activation_rule() -> None:
    assert decide_activation(new_loss=10.0, active_loss=10.0, tolerance=0.0) == (True, None)
    assert decide_activation(new_loss=10.1, active_loss=10.0, tolerance=0.02)[0] is True
    worse, note = decide_activation(new_loss=10.5, active_loss=10.0, tolerance=0.02)
    assert worse is False and note is not None and "10.5" in note and "10" in note
    # NLLs can be negative: the tolerance is a share of the magnitude.
    assert decide_activation(new_loss=-9.9, active_loss=-10.0, tolerance=0.02)[0] is True
    assert decide_activation(new_loss=-9.0, active_loss=-10.0, tolerance=0.02)[0] is False
    assert decide_activation(new_loss=float("nan"), active_loss=1.0, tolerance=1.0)[0] is False


def test_the_feedback_gate_counts_what_operators_see() -> None:
    active = {"marked_alarms": 6, "missed_faults": 0, "val_false_alarms": 1}
    better = {"marked_alarms": 1, "missed_faults": 0, "val_false_alarms": 1}
    assert decide_feedback_activation(new=better, active=active, new_loss=-5.0) == (True, None)
    # A version that quietens the dismissed windows by missing a confirmed fault is no better.
    blind = {"marked_alarms": 0, "missed_faults": 3, "val_false_alarms": 5}
    refused, note = decide_feedback_activation(new=blind, active=active, new_loss=-5.0)
    assert refused is False and note is not None
    assert "0 alarms on windows marked false_positive (active 6)" in note
    assert "3 labelled faults missed (active 0)" in note
    nan = float("nan")
    assert decide_feedback_activation(new=better, active=active, new_loss=nan)[0] is False


def test_a_worse_version_is_kept_as_a_candidate_and_says_why(
    sessions: sessionmaker[Session], settings: Settings, series_id: int
) -> None:
    worker = Worker(settings, sessions=sessions)
    queue_job(sessions, series_id)
    worker.run_once()
    job_id = queue_job(sessions, series_id)
    claimed = worker.claim()
    assert claimed is not None and claimed.job_id == job_id
    outcome = worker._train(claimed, heartbeat=NoHeartbeat())
    rejected = dataclasses.replace(outcome, activate=False, note="kept as candidate: worse")
    assert worker._store(claimed, rejected) == 2
    with sessions() as session:
        rows = session.execute(
            select(ModelVersion.version, ModelVersion.status, ModelVersion.note).order_by(
                ModelVersion.version
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "active", None),
        (2, "candidate", "kept as candidate: worse"),
    ]
    job = read_job(sessions, job_id)
    assert job.status == JOB_SUCCEEDED and job.model_version == 2
    assert job.metrics is not None
    assert job.metrics["activated"] is False and job.metrics["note"] == "kept as candidate: worse"


def test_training_runs_at_a_lower_priority_and_the_caller_keeps_its_own() -> None:
    import os
    import threading

    from app.training.pipeline import at_lower_priority

    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    inside = at_lower_priority(
        5, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    )
    assert inside == min(19, caller + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller
    assert at_lower_priority(0, lambda: 42) == 42

    def fails() -> None:
        raise ValueError("raised in the training thread")

    with pytest.raises(ValueError, match="training thread"):
        at_lower_priority(5, fails)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_training_can_run_only_on_idle_cpu_time() -> None:
    import threading

    from app.training.pipeline import at_lower_priority

    caller = os.sched_getscheduler(threading.get_native_id())
    inside = at_lower_priority(
        0, lambda: os.sched_getscheduler(threading.get_native_id()), idle=True
    )
    assert inside == os.SCHED_IDLE
    assert os.sched_getscheduler(threading.get_native_id()) == caller != os.SCHED_IDLE
    # A thread that torch (or anything) starts from the training thread inherits the policy.
    started: list[int] = []

    def spawn() -> None:
        child = threading.Thread(
            target=lambda: started.append(os.sched_getscheduler(threading.get_native_id()))
        )
        child.start()
        child.join()

    at_lower_priority(0, spawn, idle=True)
    assert started == [os.SCHED_IDLE]
