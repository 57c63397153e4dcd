"""POST/GET/DELETE /v1/labels: range labels, score feedback, the retrain trigger, soft delete."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job, Label, ScoreRecord
from app.main import create_app
from app.services.labels import window_count
from app.training.pipeline import cut_windows
from models import ScoreBatch
from tests.utils.api_helpers import Headers, assert_problem, counter_value, create_series

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def series(client: TestClient, admin: Headers) -> dict[str, Any]:
    """pump-7: channels flow, pressure, temperature; classes idle (normal), bearing_fault."""
    return create_series(client, admin)


def range_label(series_id: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "series_id": series_id,
        "start": "2026-01-01T00:00:00Z",
        "end": "2026-01-01T00:10:00Z",
        "label": "bearing_fault",
    }
    body.update(overrides)
    return body


def store_score(
    sessions: sessionmaker[Session],
    series_id: int,
    *,
    model_version: int = 3,
    span: tuple[int, int] | None = (T0_US, T0_US + 7_000_000),
    alarmed: bool = True,
) -> uuid.UUID:
    """A scored window as the score log writes it."""
    score_id = uuid.uuid4()
    with sessions() as session, session.begin():
        session.add(
            ScoreRecord(
                id=score_id,
                series_id=series_id,
                model_version=model_version,
                start_ts=span[0] if span else None,
                end_ts=span[1] if span else None,
                window=np.zeros((8, 3), dtype="<f4").tobytes(),
                raw_score=4.0,
                adjusted_score=3.5 if alarmed else 0.5,
                is_anomaly=alarmed,
            )
        )
    return score_id


def test_a_range_label_is_stored(
    client: TestClient, series: dict[str, Any], make_headers: Callable[..., Headers]
) -> None:
    body = range_label(series["id"], start=1_767_225_600.5, author="ana", note="loud bearing")
    response = client.post("/v1/labels", json=body, headers=make_headers("label"))
    assert response.status_code == 201
    label = response.json()
    assert (label.pop("points"), label.pop("windows")) == (0, 0)
    assert len(label.pop("warnings")) == 1  # no stored points
    assert response.headers["location"] == f"/v1/labels/{label['id']}"
    assert label["series_id"] == series["id"]
    assert label["start"] == "2026-01-01T00:00:00.500000Z"
    assert label["end"] == "2026-01-01T00:10:00Z"
    assert label["label"] == "bearing_fault"
    assert label["score_id"] is None
    assert label["model_version"] is None
    assert label["author"] == "ana"
    assert label["note"] == "loud bearing"
    assert label["created_at"]
    assert label["deleted_at"] is None
    reader = make_headers("read")
    assert client.get("/v1/labels", headers=reader).json()["labels"] == [label]
    assert client.get(response.headers["location"], headers=reader).json() == label
    assert_problem(client.get("/v1/labels/999", headers=reader), 404, "label 999 does not exist")


def test_a_range_label_says_what_it_covers(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    """pump-7's windows are 8 points every 4: 21 points in the range hold 4 windows."""
    seconds = T0_US // 1_000_000
    ingested = client.post(
        f"/v1/series/{series['id']}/points",
        json={"timestamps": list(range(seconds, seconds + 30)), "values": [[0, 1, 2]] * 30},
        headers=admin,
    )
    assert ingested.status_code == 200, ingested.text
    body = range_label(series["id"], start=seconds + 5, end="2026-01-01T00:00:25Z")
    created = client.post("/v1/labels", json=body, headers=admin).json()
    assert (created["points"], created["windows"], created["warnings"]) == (21, 4, [])
    short = client.post(
        "/v1/labels", json=range_label(series["id"], start=seconds, end=seconds + 6), headers=admin
    ).json()
    assert (short["points"], short["windows"], short["warnings"]) == (7, 0, [])


def test_a_range_with_no_points_is_stored_with_a_warning(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    response = client.post("/v1/labels", json=range_label(series["id"]), headers=admin)
    assert response.status_code == 201
    created = response.json()
    assert (created["points"], created["windows"]) == (0, 0)
    (warning,) = created["warnings"]
    assert warning.startswith("the range holds no stored points yet")


def test_times_without_an_offset_are_utc_and_the_response_says_so(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    body = range_label(series["id"], start="2026-01-01T00:00:00", end="2026-01-01 00:10:00")
    created = client.post("/v1/labels", json=body, headers=admin).json()
    assert created["start"] == "2026-01-01T00:00:00Z"
    assert created["warnings"][1].startswith(
        "start and end had no UTC offset and were taken as UTC"
    )
    body = range_label(series["id"], end="2026-01-01T00:00:00")
    created = client.post("/v1/labels", json={**body, "start": 1_767_139_200}, headers=admin)
    assert created.json()["warnings"][1].startswith("end had no UTC offset and was taken as UTC")


def test_notes_keep_line_breaks(client: TestClient, series: dict[str, Any], admin: Headers) -> None:
    note = "first line\n\tsecond line, température 40 °C"
    response = client.post("/v1/labels", json=range_label(series["id"], note=note), headers=admin)
    assert response.status_code == 201
    assert response.json()["note"] == note


def test_builtin_classes_label_ranges_too(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    for name in ("normal", "anomaly", "false_positive", "false_negative", "idle"):
        response = client.post(
            "/v1/labels", json=range_label(series["id"], label=name), headers=admin
        )
        assert response.status_code == 201, response.text
        assert response.json()["label"] == name


@pytest.mark.parametrize(
    ("overrides", "status", "fragments"),
    [
        (
            {"label": "seal_leak"},
            422,
            [
                "label: 'seal_leak' is not a class of series 'pump-7'",
                "valid classes: anomaly, bearing_fault, false_negative, false_positive, idle, "
                "normal",
            ],
        ),
        ({"end": "2025-12-31T23:59:59Z"}, 422, ["end must not be before start"]),
        ({"start": "last tuesday"}, 422, ["start", "'last tuesday' is not an ISO-8601"]),
        (
            {"start": "2201-01-01T00:00:00Z", "end": "2201-01-02T00:00:00Z"},
            422,
            ["start", "1970 to 2200"],
        ),
        ({"end": True}, 422, ["end"]),
        ({"series_id": 999}, 404, ["series 999 does not exist"]),
        ({"series_id": "1"}, 422, ["series_id"]),
        ({"label": ""}, 422, ["label"]),
        ({"label": "x" * 101}, 422, ["label"]),
        ({"author": "a" * 201}, 422, ["author"]),
        ({"author": "ana\u0000"}, 422, ["author", "control characters"]),
        ({"note": "bad\u0000byte"}, 422, ["note", "control characters"]),
        ({"series_id": 2**31}, 422, ["series_id"]),
        ({"series_id": 0}, 422, ["series_id"]),
        ({"colour": "red"}, 422, ["colour"]),
    ],
)
def test_invalid_range_labels_are_refused(
    client: TestClient,
    series: dict[str, Any],
    admin: Headers,
    sessions: sessionmaker[Session],
    overrides: dict[str, Any],
    status: int,
    fragments: list[str],
) -> None:
    body = {**range_label(series["id"]), **overrides}
    assert_problem(client.post("/v1/labels", json=body, headers=admin), status, *fragments)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Label)) == 0


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"1e400"])
def test_non_finite_times_are_refused(
    client: TestClient, series: dict[str, Any], admin: Headers, literal: bytes
) -> None:
    body = b'{"series_id": %d, "start": 0, "end": %s, "label": "idle"}' % (series["id"], literal)
    response = client.post(
        "/v1/labels", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_missing_fields_are_named(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    response = client.post("/v1/labels", json={"series_id": series["id"]}, headers=admin)
    body = assert_problem(response, 422, "start", "end", "label")
    assert ["body", "label"] in [e["loc"] for e in body["errors"]]
    assert body["detail"] == "start: is required; end: is required; label: is required"
    response = client.post(
        "/v1/labels", json={"score_id": "not-a-uuid", "label": "x"}, headers=admin
    )
    assert_problem(response, 422, "score_id")


def test_feedback_on_a_score_copies_its_series_version_and_span(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    score_id = store_score(sessions, series["id"], model_version=3)
    labels_before = counter_value(client, "vigil_labels", series="pump-7", label="false_positive")
    feedback_before = counter_value(
        client, "vigil_feedback", series="pump-7", model_version="3", kind="false_positive"
    )
    body = {"score_id": str(score_id), "label": "false_positive", "author": "ana"}
    response = client.post("/v1/labels", json=body, headers=admin)
    assert response.status_code == 201
    label = response.json()
    assert label["series_id"] == series["id"]
    assert label["score_id"] == str(score_id)
    assert label["model_version"] == 3
    assert label["start"] == "2026-01-01T00:00:00Z"
    assert label["end"] == "2026-01-01T00:00:07Z"
    assert label["label"] == "false_positive"
    assert label["author"] == "ana"
    assert counter_value(client, "vigil_labels", series="pump-7", label="false_positive") == (
        labels_before + 1
    )
    assert counter_value(
        client, "vigil_feedback", series="pump-7", model_version="3", kind="false_positive"
    ) == (feedback_before + 1)


def test_feedback_that_contradicts_nothing_is_kept_and_said_to_be(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    quiet = store_score(sessions, series["id"], alarmed=False)
    response = client.post(
        "/v1/labels", json={"score_id": str(quiet), "label": "false_positive"}, headers=admin
    )
    assert response.status_code == 201
    created = response.json()
    assert (created["points"], created["windows"]) == (None, None)
    (warning,) = created["warnings"]
    assert f"score {quiet} raised no alarm (adjusted score 0.5" in warning
    assert "the label is kept" in warning
    alarmed = store_score(sessions, series["id"])
    missed = client.post(
        "/v1/labels", json={"score_id": str(alarmed), "label": "false_negative"}, headers=admin
    ).json()
    assert missed["warnings"][0].startswith(f"score {alarmed} raised an alarm")
    agreed = client.post(
        "/v1/labels", json={"score_id": str(alarmed), "label": "false_positive"}, headers=admin
    ).json()
    assert agreed["warnings"] == []


def test_feedback_may_name_a_class_and_a_score_without_span(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    score_id = store_score(sessions, series["id"], span=None)
    body = {"score_id": str(score_id), "label": "bearing_fault", "series_id": series["id"]}
    response = client.post("/v1/labels", json=body, headers=admin)
    assert response.status_code == 201
    assert response.json()["start"] is None
    assert response.json()["end"] is None
    assert response.json()["label"] == "bearing_fault"


def test_feedback_errors(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    unknown = uuid.uuid4()
    response = client.post(
        "/v1/labels", json={"score_id": str(unknown), "label": "false_positive"}, headers=admin
    )
    assert_problem(response, 404, f"score {unknown} is unknown or has expired")
    score_id = store_score(sessions, series["id"])
    response = client.post(
        "/v1/labels", json={"score_id": str(score_id), "label": "rust"}, headers=admin
    )
    assert_problem(response, 422, "'rust' is not a class", "false_negative, false_positive")
    other = create_series(client, admin, name="pump-8")
    response = client.post(
        "/v1/labels",
        json={"score_id": str(score_id), "label": "false_negative", "series_id": other["id"]},
        headers=admin,
    )
    assert_problem(response, 422, "series_id", f"belongs to series {series['id']}")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Label)) == 0


@pytest.fixture
def unflushed_client(settings: Settings) -> Iterator[TestClient]:
    """The app with a score log that never flushes by itself."""
    with TestClient(create_app(settings.model_copy(update={"score_log_flush_seconds": 3600}))) as c:
        yield c


def test_feedback_on_a_score_still_in_the_log_buffer_finds_it(
    unflushed_client: TestClient, make_headers: Callable[..., Headers]
) -> None:
    admin = make_headers("admin")
    series = create_series(unflushed_client, admin)
    score_log = unflushed_client.app.state.runtime.score_log  # type: ignore[attr-defined]
    n = 1
    batch = ScoreBatch(
        raw_score=np.array([5.0]),
        score=np.array([2.0]),
        p_false_positive=np.zeros(n),
        p_false_negative=np.zeros(n),
        adjusted_score=np.array([2.0]),
        is_anomaly=np.array([True]),
        class_probabilities=np.full((n, 6), 1 / 6),
        channel_contributions=np.zeros((n, 3)),
        step_contributions=np.zeros((n, 8)),
        quality=np.zeros((n, 3), dtype=np.uint8),
        threshold=1.0,
    )
    (score_id,) = score_log.append(
        series_id=series["id"],
        version=2,
        windows=np.zeros((n, 8, 3), dtype=np.float32),
        batch=batch,
        flagged=[True],
        spans=[(T0_US, T0_US + 7_000_000)],
    )
    assert score_log.pending == 1
    response = unflushed_client.post(
        "/v1/labels", json={"score_id": str(score_id), "label": "false_negative"}, headers=admin
    )
    assert response.status_code == 201, response.text
    assert response.json()["model_version"] == 2
    assert response.json()["start"] == "2026-01-01T00:00:00Z"
    assert score_log.pending == 0


def test_listing_filters_by_series_label_and_deletion(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    other = create_series(client, admin, name="pump-8")
    a = client.post("/v1/labels", json=range_label(series["id"]), headers=admin).json()
    b = client.post(
        "/v1/labels", json=range_label(series["id"], label="idle"), headers=admin
    ).json()
    c = client.post("/v1/labels", json=range_label(other["id"], label="idle"), headers=admin).json()
    assert client.delete(f"/v1/labels/{a['id']}", headers=admin).status_code == 204

    def ids(**params: Any) -> list[int]:
        response = client.get("/v1/labels", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return [label["id"] for label in response.json()["labels"]]

    assert ids() == [b["id"], c["id"]]
    assert ids(series_id=series["id"]) == [b["id"]]
    assert ids(label="idle") == [b["id"], c["id"]]
    assert ids(series_id=other["id"], label="idle") == [c["id"]]
    assert ids(include_deleted=True) == [a["id"], b["id"], c["id"]]
    assert ids(include_deleted=True, label="bearing_fault") == [a["id"]]
    assert ids(limit=1, offset=1) == [c["id"]]
    assert_problem(client.get("/v1/labels", params={"series_id": 999}, headers=admin), 404)
    for params in ({"limit": 1001}, {"series_id": 10**20}, {"offset": 10**20}, {"label": "a\0b"}):
        response = client.get("/v1/labels", params=params, headers=admin)
        assert_problem(response, 422, next(iter(params)))


def test_delete_is_soft_and_idempotent(
    client: TestClient,
    series: dict[str, Any],
    make_headers: Callable[..., Headers],
    sessions: sessionmaker[Session],
) -> None:
    labeller, reader = make_headers("label"), make_headers("read")
    label = client.post("/v1/labels", json=range_label(series["id"]), headers=labeller).json()
    response = client.delete(f"/v1/labels/{label['id']}", headers=labeller)
    assert response.status_code == 204
    assert response.content == b""
    assert client.get("/v1/labels", headers=reader).json()["labels"] == []
    listed = client.get("/v1/labels", params={"include_deleted": True}, headers=reader).json()[
        "labels"
    ]
    assert listed[0]["id"] == label["id"]
    deleted_at = listed[0]["deleted_at"]
    assert deleted_at is not None
    assert client.delete(f"/v1/labels/{label['id']}", headers=labeller).status_code == 204
    again = client.get("/v1/labels", params={"include_deleted": True}, headers=reader).json()[
        "labels"
    ]
    assert again[0]["deleted_at"] == deleted_at  # the first deletion time is kept for audit
    single = client.get(f"/v1/labels/{label['id']}", headers=reader).json()
    assert single["deleted_at"] == deleted_at
    with sessions() as session:
        stored = session.get(Label, label["id"])
        assert stored is not None
        assert stored.deleted_at is not None
    assert_problem(
        client.delete("/v1/labels/999", headers=labeller), 404, "label 999 does not exist"
    )


def test_labels_count_in_metrics(
    client: TestClient, series: dict[str, Any], admin: Headers
) -> None:
    before = counter_value(client, "vigil_labels", series="pump-7", label="idle")
    fp_before = counter_value(
        client, "vigil_feedback", series="pump-7", model_version="none", kind="false_positive"
    )
    client.post("/v1/labels", json=range_label(series["id"], label="idle"), headers=admin)
    client.post("/v1/labels", json=range_label(series["id"], label="idle"), headers=admin)
    client.post("/v1/labels", json=range_label(series["id"], label="false_positive"), headers=admin)
    assert counter_value(client, "vigil_labels", series="pump-7", label="idle") == before + 2
    assert counter_value(
        client, "vigil_feedback", series="pump-7", model_version="none", kind="false_positive"
    ) == (fp_before + 1)


def test_labels_on_a_series_without_a_model_arm_no_retrain(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    for expected in (1, 2):
        created = client.post("/v1/labels", json=range_label(series["id"]), headers=admin)
        assert created.json()["retrain"] is None
        count = client.get(f"/v1/series/{series['id']}", headers=admin).json()
        assert count["labels_since_train"] == expected
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_no_retrain_is_queued_when_the_policy_is_off(
    settings: Settings, make_headers: Callable[..., Headers], sessions: sessionmaker[Session]
) -> None:
    with TestClient(create_app(settings.model_copy(update={"retrain_after_labels": 0}))) as c:
        admin = make_headers("admin")
        series = create_series(c, admin)
        for _ in range(3):
            assert (
                c.post("/v1/labels", json=range_label(series["id"]), headers=admin).status_code
                == 201
            )
        assert c.get(f"/v1/series/{series['id']}", headers=admin).json()["labels_since_train"] == 3
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_an_idempotency_key_replays_the_first_label(
    client: TestClient, series: dict[str, Any], admin: Headers, sessions: sessionmaker[Session]
) -> None:
    headers = {**admin, "Idempotency-Key": "label-1"}
    first = client.post("/v1/labels", json=range_label(series["id"]), headers=headers)
    again = client.post("/v1/labels", json=range_label(series["id"]), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    other = client.post("/v1/labels", json=range_label(series["id"], label="idle"), headers=headers)
    assert other.status_code == 422
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Label)) == 1


def test_window_count_is_the_trainers() -> None:
    for points in range(0, 60):
        for window_size, stride in [(8, 4), (8, 8), (5, 1), (16, 3)]:
            assert window_count(points, window_size=window_size, stride=stride) == len(
                cut_windows(
                    np.arange(points, dtype=np.int64),
                    window_size=window_size,
                    stride=stride,
                    max_gap_us=None,
                )
            )
