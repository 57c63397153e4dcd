"""Issue 12, item 10: what an idle API does must not grow with the number of series.

Statements are counted with a SQLAlchemy event listener, on the calling thread only (the
app's own background threads share the engine): a `/metrics` exposition and the pollers'
idle rounds run the same number of statements at 3 series as at 300. Changes still show.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import MODEL_ACTIVE, Alarm, ModelVersion, Point, Series
from app.detection.detector import Detector
from app.metrics import exposition
from app.runtime import Runtime
from app.training.versions import count_activation

T0_US = 1_767_225_600 * 1_000_000


@contextmanager
def statements_here() -> Iterator[list[str]]:
    """The SQL statements run on this thread while the block runs."""
    seen: list[str] = []
    me = threading.get_ident()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() == me:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def add_series(sessions: sessionmaker[Session], first: int, count: int) -> None:
    """Series `s{first}` ... with a point each; every tenth with an active model and an open
    alarm. Written directly: the API's ingestion would also wake the detector."""
    with sessions() as session, session.begin():
        for k in range(first, first + count):
            series = Series(
                name=f"s{k}", channels=["a"], window_size=8, stride=4, classes={"normal": "normal"}
            )
            session.add(series)
            session.flush()
            session.add(Point(series_id=series.id, ts=T0_US + k * 1_000_000, values=b"\0" * 8))
            if k % 10 == 0:
                session.add(active_version(series.id))
                session.add(open_alarm(series.id))
        count_activation(session)


def active_version(series_id: int, version: int = 1) -> ModelVersion:
    blob = b"not a model: nothing here loads it"
    return ModelVersion(
        series_id=series_id,
        version=version,
        status=MODEL_ACTIVE,
        artifact=blob,
        sha256=hashlib.sha256(blob).hexdigest(),
        metrics={},
        trained_at=utcnow(),
        activated_at=utcnow(),
    )


def open_alarm(series_id: int) -> Alarm:
    return Alarm(
        series_id=series_id,
        kind="model",
        first_seq=0,
        last_seq=0,
        start_ts=T0_US,
        end_ts=T0_US,
        windows=1,
        peak_score=9.0,
        threshold=1.0,
        model_version=1,
        channels=[],
    )


def runtime_of(client: TestClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def scrape_statements(runtime: Runtime) -> tuple[int, str]:
    """Statements of one exposition (as /metrics makes it) after the first, and its text."""
    exposition(runtime.gauges)  # the first scrape reads the newest points once
    with statements_here() as seen:
        body, _ = exposition(runtime.gauges)
    # A steady scrape reads neither the points nor the model versions of every series.
    assert not [s for s in seen if "points" in s or "model_versions" in s], seen
    return len(seen), body.decode()


def lines_of(text: str, metric: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(metric + "{")]


def test_metrics_scrape_statements_do_not_grow_with_series(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    runtime = runtime_of(client)
    add_series(sessions, 0, 3)
    runtime.gauges.resync_newest()
    few, text = scrape_statements(runtime)
    assert len(lines_of(text, "vigil_last_point_timestamp_seconds")) == 3

    add_series(sessions, 3, 297)
    runtime.gauges.resync_newest()
    many, text = scrape_statements(runtime)
    assert many <= few
    assert len(lines_of(text, "vigil_last_point_timestamp_seconds")) == 300
    # Only series with something to say: 30 active models, 30 with open alarms.
    assert len(lines_of(text, "vigil_active_model_version")) == 30
    assert len(lines_of(text, "vigil_model_age_seconds")) == 30
    assert len(lines_of(text, "vigil_open_alarms")) == 30
    assert 'vigil_open_alarms{series="s10"} 1.0' in text
    assert 'vigil_open_alarms{series="s11"}' not in text


def test_metrics_show_changes(
    client: TestClient, sessions: sessionmaker[Session], admin: dict[str, str]
) -> None:
    runtime = runtime_of(client)
    created = client.post(
        "/v1/series",
        headers=admin,
        json={"name": "pump", "channels": ["a"], "window_size": 8, "stride": 4},
    )
    assert created.status_code == 201, created.text
    series_id = created.json()["id"]
    before = client.get("/metrics").text
    assert 'vigil_last_point_timestamp_seconds{series="pump"}' not in before
    assert 'vigil_active_model_version{series="pump"}' not in before

    ingested = client.post(
        f"/v1/series/{series_id}/points",
        headers=admin,
        json={"timestamps": [1_767_225_600, 1_767_225_660], "values": [[1.0], [2.0]]},
    )
    assert ingested.status_code == 200, ingested.text
    text = client.get("/metrics").text
    assert 'vigil_last_point_timestamp_seconds{series="pump"} 1.76722566e+09' in text

    with sessions() as session, session.begin():
        session.add(active_version(series_id, version=3))
        session.add(open_alarm(series_id))
        count_activation(session)
    text = client.get("/metrics").text
    assert 'vigil_active_model_version{series="pump"} 3.0' in text
    assert 'vigil_open_alarms{series="pump"} 1.0' in text

    # Points another process wrote arrive with the periodic full read.
    with sessions() as session, session.begin():
        session.add(Point(series_id=series_id, ts=1_767_229_200_000_000, values=b"\0" * 8))
    runtime.gauges.resync_newest()
    text = client.get("/metrics").text
    assert 'vigil_last_point_timestamp_seconds{series="pump"} 1.7672292e+09' in text


def idle_statements(action: Callable[[], object]) -> int:
    with statements_here() as seen:
        action()
    return len(seen)


def test_pollers_idle_rounds_do_not_grow_with_series(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    runtime = runtime_of(client)
    registry = runtime.registry
    detector = Detector(runtime.settings, sessions=sessions, name="test-idle")
    add_series(sessions, 0, 3)
    registry.refresh()
    few = idle_statements(registry.refresh_if_changed), idle_statements(detector.run_once)
    add_series(sessions, 3, 297)
    registry.refresh()
    many = idle_statements(registry.refresh_if_changed), idle_statements(detector.run_once)
    assert many == few
    assert few[0] == 1  # the generation, nothing else

    # A counted change is picked up by the next round.
    with sessions() as session, session.begin():
        session.add(active_version(registry_series_id(sessions, "s1"), version=2))
        count_activation(session)
    assert registry.refresh_if_changed() is True
    assert registry._active[registry_series_id(sessions, "s1")] == 2
    assert registry.refresh_if_changed() is False


def registry_series_id(sessions: sessionmaker[Session], name: str) -> int:
    with sessions() as session:
        series = session.query(Series).filter_by(name=name).one()
        return series.id


@pytest.mark.parametrize("change", ["threshold", "delete"])
def test_series_changes_are_counted(client: TestClient, admin: dict[str, str], change: str) -> None:
    """Other API processes see a changed or deleted series through the generation."""
    runtime = runtime_of(client)
    created = client.post(
        "/v1/series",
        headers=admin,
        json={"name": "pump", "channels": ["a"], "window_size": 8, "stride": 4},
    )
    series_id = created.json()["id"]
    other = Runtime.build(runtime.settings)  # another API process's registry, not started
    try:
        other.registry.refresh()
        assert other.registry.cached_series(series_id) is not None
        assert other.registry.refresh_if_changed() is False
        if change == "threshold":
            response = client.patch(
                f"/v1/series/{series_id}", headers=admin, json={"threshold_quantile": 0.9}
            )
            assert response.status_code == 200, response.text
        else:
            response = client.delete(f"/v1/series/{series_id}", headers=admin)
            assert response.status_code == 204, response.text
        assert other.registry.refresh_if_changed() is True
        info = other.registry.cached_series(series_id)
        if change == "threshold":
            assert info is not None and info.threshold_quantile == 0.9
        else:
            assert info is None
    finally:
        other.engine.dispose()
