"""DELETE /v1/series/{id}: everything the series owns goes, audited; a running job ends
cleanly; other series are untouched."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job, Label, ModelVersion, Point, ScoreRecord, Series
from app.services.series import delete_series, owned_tables
from app.training.worker import Claimed, Worker
from tests.utils.api_helpers import Headers, assert_problem
from tests.utils.stream import create_series, insert_points, make_stream
from tests.utils.trained import queue_job, read_job

OWNED = (Point, Label, ScoreRecord, Job, ModelVersion)


def counts(sessions: sessionmaker[Session], series_id: int) -> dict[str, int]:
    with sessions() as session:
        return {
            model.__tablename__: int(
                session.scalar(
                    select(func.count()).select_from(model).where(model.series_id == series_id)
                )
                or 0
            )
            for model in OWNED
        }


def fill(sessions: sessionmaker[Session], series_id: int) -> None:
    insert_points(sessions, series_id, make_stream(50))
    with sessions() as session, session.begin():
        session.execute(
            insert(Label),
            [{"series_id": series_id, "start_ts": 1, "end_ts": 2, "label": "anomaly"}] * 3,
        )
        session.execute(
            insert(ScoreRecord),
            [
                {
                    "id": uuid.uuid4(),
                    "series_id": series_id,
                    "model_version": 1,
                    "window": b"\0" * 4,
                    "raw_score": 1.0,
                    "adjusted_score": 1.0,
                    "is_anomaly": False,
                }
                for _ in range(4)
            ],
        )
        session.execute(
            insert(Job), [{"series_id": series_id, "status": "succeeded", "reason": "manual"}] * 2
        )
        session.execute(
            insert(ModelVersion),
            [
                {
                    "series_id": series_id,
                    "version": v,
                    "status": "retired",
                    "artifact": b"x",
                    "sha256": "0" * 64,
                    "metrics": {},
                }
                for v in (1, 2)
            ],
        )


def test_sqlite_enforces_foreign_keys(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        if session.get_bind().dialect.name == "sqlite":
            assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_every_table_that_refers_to_series_is_owned() -> None:
    names = {table.name for table in owned_tables()}
    assert {model.__tablename__ for model in OWNED} <= names
    assert "series" not in names and "api_keys" not in names


def test_delete_removes_everything_the_series_owns_and_is_audited(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    make_headers: Callable[..., Headers],
) -> None:
    doomed, kept = create_series(sessions, name="doomed"), create_series(sessions, name="kept")
    fill(sessions, doomed)
    fill(sessions, kept)
    before = counts(sessions, doomed)
    assert before == {"points": 50, "labels": 3, "scores": 4, "jobs": 2, "model_versions": 2}
    path = f"/v1/series/{doomed}"
    not_admin = make_headers("read", "ingest", "label", "score", "train")
    assert_problem(client.delete(path, headers=not_admin), 403, "admin")
    assert counts(sessions, doomed) == before

    response = client.delete(path, headers=admin)
    assert response.status_code == 204 and response.content == b""
    assert counts(sessions, doomed) == dict.fromkeys(before, 0)
    assert counts(sessions, kept) == before  # the other series keeps all of its rows
    assert_problem(client.get(path, headers=admin), 404, f"series {doomed}")
    assert_problem(client.delete(path, headers=admin), 404, f"series {doomed}")
    assert_problem(client.get(f"{path}/points", headers=admin), 404)

    audit = client.get("/v1/audit", headers=admin).json()
    assert audit["next_cursor"] is None
    [record] = audit["records"]
    assert record["action"] == "series.delete"
    assert record["target"] == f"series/{doomed}"
    assert record["key_name"] == "admin" and record["key_prefix"]
    assert record["detail"]["name"] == "doomed"
    assert {k: v for k, v in record["detail"]["rows"].items() if k in before} == before
    assert_problem(client.get("/v1/audit", headers=not_admin), 403, "admin")


def test_a_job_whose_series_is_deleted_before_it_trains_ends_cleanly(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions)
    insert_points(sessions, series_id, make_stream(200))
    queue_job(sessions, series_id)
    worker = Worker(settings, sessions=sessions)
    claimed = worker.claim()
    assert claimed is not None
    with sessions() as session:
        delete_series(session=session, series_id=series_id, key_id=None)
    worker.execute(claimed)  # returns: nothing raised
    with sessions() as session:
        assert session.get(Series, series_id) is None
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0


class DeletesWhileTraining(Worker):
    """A worker during whose training the series is deleted (as an operator would, from the
    API, while the job runs)."""

    def _train(self, claimed: Claimed, heartbeat: object) -> object:  # type: ignore[override]
        outcome = super()._train(claimed, heartbeat)  # type: ignore[arg-type]
        with self.sessions() as session:
            delete_series(session=session, series_id=claimed.series_id, key_id=None)
        return outcome


def test_a_job_running_while_its_series_is_deleted_stores_nothing(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions)
    other = create_series(sessions, name="other")
    for target in (series_id, other):
        insert_points(sessions, target, make_stream(200))
    queue_job(sessions, series_id)
    worker = DeletesWhileTraining(settings, sessions=sessions)
    assert worker.run_once() is not None
    with sessions() as session:
        assert session.get(Series, series_id) is None  # not recreated
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0
    # The worker goes on with other series' jobs.
    job_id = queue_job(sessions, other)
    assert Worker(settings, sessions=sessions).run_once() == job_id
    assert read_job(sessions, job_id).status == "succeeded"
