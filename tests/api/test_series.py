"""POST/GET/PATCH /v1/series: creation, validation, listing and the safe changes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import ModelVersion
from models import TrainedModel
from tests.utils.api_helpers import CHANNELS, Headers, assert_problem, create_series, series_body
from tests.utils.stream import insert_points, make_stream
from tests.utils.trained import read_job, train_now

BUILTINS = {
    "normal": "normal",
    "anomaly": "anomaly",
    "false_positive": "normal",
    "false_negative": "anomaly",
}


def test_create_returns_the_series_with_builtin_classes(
    client: TestClient, make_headers: Callable[..., Headers]
) -> None:
    response = client.post("/v1/series", json=series_body(), headers=make_headers("ingest"))
    assert response.status_code == 201
    body = response.json()
    assert isinstance(body["id"], int)
    assert response.headers["location"] == f"/v1/series/{body['id']}"
    assert body["name"] == "pump-7"
    assert body["channels"] == CHANNELS
    assert body["window_size"] == 8
    assert body["stride"] == 4
    assert body["classes"] == {**BUILTINS, "idle": "normal", "bearing_fault": "anomaly"}
    assert body["threshold_quantile"] == 0.99
    assert body["labels_since_train"] == 0
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    assert datetime.fromisoformat(body["updated_at"]).tzinfo is not None


def test_create_with_defaults_and_a_builtin_repeated_with_its_kind(
    client: TestClient, admin: Headers
) -> None:
    body = series_body(classes={"false_positive": "normal"}, threshold_quantile=0.95)
    response = client.post("/v1/series", json=body, headers=admin)
    assert response.status_code == 201
    assert response.json()["classes"] == BUILTINS
    assert response.json()["threshold_quantile"] == 0.95
    del body["classes"]
    body["name"] = "pump-8"
    response = client.post("/v1/series", json=body, headers=admin)
    assert response.status_code == 201
    assert response.json()["classes"] == BUILTINS


def test_a_taken_name_is_409_naming_it(client: TestClient, admin: Headers) -> None:
    create_series(client, admin)
    response = client.post("/v1/series", json=series_body(), headers=admin)
    assert_problem(response, 409, "'pump-7'", "already exists")
    assert len(client.get("/v1/series", headers=admin).json()["series"]) == 1


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"name": "pump 7"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": ""}, "name"),
        ({"channels": []}, "channels"),
        ({"channels": [f"c{i}" for i in range(65)]}, "channels"),
        ({"channels": ["a", "b", "a"]}, "channels[2] 'a' appears more than once"),
        ({"channels": ["a", ""]}, "channels"),
        ({"channels": ["a", "Timestamp"]}, "reserved for the time column"),
        ({"channels": ["a,b"]}, "must not contain commas"),
        ({"channels": [" a"]}, "white space"),
        ({"channels": "flow"}, "channels"),
        ({"window_size": 1}, "window_size"),
        ({"window_size": 4097, "stride": 1}, "window_size"),
        ({"window_size": "128"}, "window_size"),
        ({"stride": 0}, "stride"),
        ({"stride": 9}, "stride (9) must not exceed window_size (8)"),
        ({"classes": {"idle": "boring"}}, "classes.idle"),
        ({"classes": {"bad name": "normal"}}, "classes"),
        ({"classes": {"false_positive": "anomaly"}}, "'false_positive' is built in"),
        ({"threshold_quantile": 1.0}, "threshold_quantile"),
        ({"threshold_quantile": 0}, "threshold_quantile"),
        ({"windowsize": 8}, "windowsize"),
    ],
)
def test_invalid_series_is_422_naming_the_field(
    client: TestClient, admin: Headers, overrides: dict[str, Any], fragment: str
) -> None:
    response = client.post("/v1/series", json=series_body(**overrides), headers=admin)
    assert_problem(response, 422, fragment)
    assert client.get("/v1/series", headers=admin).json() == {"series": [], "next_cursor": None}


def test_missing_fields_are_named(client: TestClient, admin: Headers) -> None:
    response = client.post("/v1/series", json={"name": "p"}, headers=admin)
    body = assert_problem(response, 422, "channels", "window_size", "stride")
    assert ["body", "channels"] in [error["loc"] for error in body["errors"]]


def test_get_and_list(client: TestClient, make_headers: Callable[..., Headers]) -> None:
    writer = make_headers("ingest")
    first = create_series(client, writer, name="a")
    second = create_series(client, writer, name="b")
    reader = make_headers("read")
    response = client.get(f"/v1/series/{second['id']}", headers=reader)
    assert response.status_code == 200
    assert response.json() == second
    listed = client.get("/v1/series", headers=reader).json()["series"]
    assert [s["name"] for s in listed] == ["a", "b"]
    assert listed[0] == first
    page = client.get("/v1/series", params={"limit": 1, "offset": 1}, headers=reader).json()[
        "series"
    ]
    assert [s["name"] for s in page] == ["b"]
    assert_problem(client.get("/v1/series", params={"limit": 0}, headers=reader), 422, "limit")


def test_unknown_series_is_404(client: TestClient, admin: Headers) -> None:
    assert_problem(client.get("/v1/series/999", headers=admin), 404, "series 999 does not exist")
    response = client.patch("/v1/series/999", json={"threshold_quantile": 0.5}, headers=admin)
    assert_problem(response, 404, "series 999")


@pytest.mark.parametrize("series_id", ["0", "-1", str(2**31), str(10**30), "abc"])
def test_ids_that_cannot_exist_are_422(client: TestClient, admin: Headers, series_id: str) -> None:
    assert_problem(client.get(f"/v1/series/{series_id}", headers=admin), 422, "series_id")
    response = client.patch(f"/v1/series/{series_id}", json={}, headers=admin)
    assert_problem(response, 422, "series_id")


def test_patch_adds_classes_and_moves_the_threshold(client: TestClient, admin: Headers) -> None:
    created = create_series(client, admin)
    response = client.patch(
        f"/v1/series/{created['id']}",
        json={"classes": {"seal_leak": "anomaly", "idle": "normal"}, "threshold_quantile": 0.9},
        headers=admin,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["classes"] == {**created["classes"], "seal_leak": "anomaly"}
    assert body["threshold_quantile"] == 0.9
    assert body["window_size"] == created["window_size"]
    updated_at = datetime.fromisoformat(body["updated_at"])
    assert updated_at > datetime.fromisoformat(created["updated_at"])
    assert client.get(f"/v1/series/{created['id']}", headers=admin).json() == body


def test_an_empty_patch_changes_nothing(client: TestClient, admin: Headers) -> None:
    created = create_series(client, admin)
    response = client.patch(f"/v1/series/{created['id']}", json={}, headers=admin)
    assert response.status_code == 200
    assert response.json() == created


@pytest.mark.parametrize(
    ("patch", "status", "fragment"),
    [
        (
            {"classes": {"idle": "anomaly"}},
            409,
            "class 'idle' of series 'pump-7' has kind 'normal'",
        ),
        ({"classes": {"false_negative": "normal"}}, 409, "'false_negative'"),
        ({"classes": {"bearing_fault": None}}, 409, "cannot be removed"),
        ({"classes": {"idle": "sleepy"}}, 422, "classes.idle"),
        ({"threshold_quantile": 1.5}, 422, "threshold_quantile"),
        ({"threshold_quantile": 0.0}, 422, "threshold_quantile"),
        ({"window_size": 16}, 422, "window_size cannot be changed after creation"),
        ({"channels": ["a"], "name": "x"}, 422, "name, channels cannot be changed"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
def test_patch_refuses_what_models_cannot_live_with(
    client: TestClient, admin: Headers, patch: dict[str, Any], status: int, fragment: str
) -> None:
    created = create_series(client, admin)
    response = client.patch(f"/v1/series/{created['id']}", json=patch, headers=admin)
    assert_problem(response, status, fragment)
    assert client.get(f"/v1/series/{created['id']}", headers=admin).json() == created


def test_patch_drops_the_cached_series_metadata(client: TestClient, admin: Headers) -> None:
    created = create_series(client, admin)
    registry = client.app.state.runtime.registry  # type: ignore[attr-defined]
    assert registry.load_series(created["id"]).threshold_quantile == 0.99
    assert registry.cached_series(created["id"]) is not None
    client.patch(f"/v1/series/{created['id']}", json={"threshold_quantile": 0.5}, headers=admin)
    assert registry.cached_series(created["id"]) is None
    assert registry.load_series(created["id"]).threshold_quantile == 0.5


def test_training_options_are_stored_and_used_by_the_next_job(
    client: TestClient,
    admin: dict[str, str],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    body = {
        "name": "press-3",
        "channels": ["force", "temp"],
        "window_size": 16,
        "stride": 8,
        "training": {
            "steps": 30,
            "batch_size": 16,
            "latent_dim": 3,
            "autoregressive": False,
            "score_samples": 4,
        },
    }
    created = client.post("/v1/series", json=body, headers=admin)
    assert created.status_code == 201, created.text
    series = created.json()
    assert series["training"]["steps"] == 30 and series["training"]["lr"] is None
    refused = client.post(
        "/v1/series", json={**body, "name": "press-4", "training": {"epochs": 3}}, headers=admin
    )
    assert refused.status_code == 422 and "epochs" in refused.text
    refused = client.patch(
        f"/v1/series/{series['id']}", json={"training": {"lr": 0}}, headers=admin
    )
    assert refused.status_code == 422 and "lr" in refused.text
    stream = make_stream(400, channels=2)
    insert_points(sessions, series["id"], stream)
    job = read_job(sessions, train_now(sessions, settings, series["id"]))
    assert job.status == "succeeded", job.error
    assert job.metrics is not None
    assert job.metrics["steps"] == 30 and job.metrics["batch_size"] == 16
    with sessions() as session:
        blob = session.scalar(select(ModelVersion.artifact))
    model = TrainedModel.from_bytes(blob)
    assert model.config.latent_dim == 3 and model.train_config.score_samples == 4
    assert not model.config.autoregressive
    assert 4 in model.calibrations  # served at L = 4, calibrated at L = 4
    # Back to the defaults.
    reset = client.patch(f"/v1/series/{series['id']}", json={"training": {}}, headers=admin)
    assert reset.status_code == 200 and reset.json()["training"]["steps"] is None
    # Switching the decoder changes the network's shape: the next model trains from scratch.
    switched = client.patch(
        f"/v1/series/{series['id']}",
        json={"training": {"steps": 30, "batch_size": 16, "latent_dim": 3, "autoregressive": True}},
        headers=admin,
    )
    assert switched.status_code == 200, switched.text
    job = read_job(sessions, train_now(sessions, settings, series["id"]))
    assert job.status == "succeeded", job.error
    with sessions() as session:
        blob = session.scalar(select(ModelVersion.artifact).order_by(ModelVersion.version.desc()))
    model = TrainedModel.from_bytes(blob)
    assert model.config.autoregressive and model.config.latent_dim == 3
