"""POST /v1/score against a model trained by the real worker."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx2
import numpy as np
import orjson
import pytest
import simdjson
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import ModelVersion, ScoreRecord
from app.main import create_app
from app.schemas import score_codecs
from app.scoring.registry import load_artifact
from tests.utils.stream import create_series, windows_of
from tests.utils.trained import train_now, trained_series

Headers = dict[str, str]


def post_binary(
    client: TestClient, admin: Headers, series_id: int, windows: np.ndarray
) -> httpx2.Response:
    """POST /v1/score with `windows` as the binary body: little-endian float32 and its shape."""
    return client.post(
        "/v1/score",
        content=windows.astype("<f4").tobytes(),
        headers={
            **admin,
            "Content-Type": "application/octet-stream",
            "X-Vigil-Series-Id": str(series_id),
            "X-Vigil-Shape": ",".join(map(str, windows.shape)),
        },
    )


@pytest.fixture
def trained(sessions: sessionmaker[Session], settings: Settings) -> tuple[int, np.ndarray]:
    series_id, stream = trained_series(sessions, settings)
    return series_id, windows_of(stream, window_size=16, stride=8)


def test_scores_windows_and_logs_them(
    client: TestClient,
    make_headers: Callable[..., Headers],
    sessions: sessionmaker[Session],
    trained: tuple[int, np.ndarray],
) -> None:
    series_id, windows = trained
    response = client.post(
        "/v1/score",
        json={"series_id": series_id, "windows": windows[:3].tolist()},
        headers=make_headers("score"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == 1
    assert body["threshold"] > 0
    assert len(body["results"]) == 3
    first = body["results"][0]
    assert first["class_probabilities"] == {}  # trained without labels: pi says nothing yet
    assert set(first["channel_contributions"]) == {"c0", "c1", "c2"}
    assert first["score"] >= 0
    assert first["p_false_positive"] == 0.0  # never labelled: it must not move the score
    assert first["adjusted_score"] == pytest.approx(first["score"])
    assert first["is_anomaly"] == (first["adjusted_score"] > body["threshold"])
    # The scored windows reach the database off the request path.
    deadline = time.monotonic() + 5
    ids = {r["score_id"] for r in body["results"]}
    stored: set[str] = set()
    while time.monotonic() < deadline and stored != ids:
        time.sleep(0.05)
        with sessions() as session:
            stored = {str(i) for i in session.scalars(select(ScoreRecord.id))}
    assert stored == ids


def test_faulty_windows_outscore_normal_ones(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, windows = trained
    faulty = windows[:4] + 3.0
    response = client.post(
        "/v1/score",
        json={"series_id": series_id, "windows": np.concatenate([windows[:4], faulty]).tolist()},
        headers=admin,
    )
    scores = [r["adjusted_score"] for r in response.json()["results"]]
    assert min(scores[4:]) > max(scores[:4])
    assert all(r["is_anomaly"] for r in response.json()["results"][4:])


def test_binary_body_scores_like_json(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, windows = trained
    batch = windows[:5]
    as_json = client.post(
        "/v1/score", json={"series_id": series_id, "windows": batch.tolist()}, headers=admin
    ).json()
    as_binary = post_binary(client, admin, series_id, batch)
    assert as_binary.status_code == 200, as_binary.text
    raw_json = [r["raw_score"] for r in as_json["results"]]
    raw_binary = [r["raw_score"] for r in as_binary.json()["results"]]
    assert raw_binary == pytest.approx(raw_json, rel=1e-6)


def test_scores_a_stored_range(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, _ = trained
    response = client.post(
        "/v1/score",
        json={
            "series_id": series_id,
            "start": "2026-01-01T00:00:00Z",
            "end": "2026-01-01T00:00:39Z",
        },
        headers=admin,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    # 40 points, windows of 16 every 8: starts 0, 8, 16, 24
    assert [r["start"] for r in results] == [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:08Z",
        "2026-01-01T00:00:16Z",
        "2026-01-01T00:00:24Z",
    ]
    assert results[0]["end"] == "2026-01-01T00:00:15Z"


def test_no_model_yet_is_409(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series_id = create_series(sessions, name="untrained")
    windows = np.zeros((1, 16, 3)).tolist()
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": windows}, headers=admin
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert "no trained model" in response.json()["detail"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda w: w[:, :10, :], "windows"),  # too few time steps
        (lambda w: w[:, :, :2], "windows"),  # too few channels
    ],
)
def test_wrong_shapes_are_named(
    client: TestClient,
    admin: Headers,
    trained: tuple[int, np.ndarray],
    mutate: Callable[[np.ndarray], np.ndarray],
    field: str,
) -> None:
    series_id, windows = trained
    response = client.post(
        "/v1/score",
        json={"series_id": series_id, "windows": mutate(windows[:2]).tolist()},
        headers=admin,
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}:")
    assert "(N, 16, 3)" in detail


def test_ragged_and_non_numeric_windows_name_the_position(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, windows = trained
    ragged = windows[:2].tolist()
    ragged[1][5] = [1.0, 2.0]
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": ragged}, headers=admin
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("windows.1.5:")
    text = windows[:1].tolist()
    text[0][3][2] = "hot"
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": text}, headers=admin
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("windows.0.3.2: must be a number")


def test_steps_whose_lengths_cancel_out_are_still_refused(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    """One step a value short and the next a value over: the count of numbers is right, the
    windows are not. (simdjson's flat copy of an array ignores its nesting.)"""
    series_id, windows = trained
    shifted = windows[:2].tolist()
    shifted[1][4] = shifted[1][4] + [0.5]
    shifted[1][5] = shifted[1][5][:-1]
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": shifted}, headers=admin
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("windows.1.4: must hold 3 values")
    flat = windows[:1].reshape(1, 1, -1).tolist()  # one step holding every value
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": flat}, headers=admin
    )
    assert response.status_code == 422
    assert response.json()["detail"].endswith("got (1, 1, 48)")


@pytest.mark.parametrize(
    "value",
    [
        0.30199998617172241,  # a float32 as Python prints it: 17 digits
        -0.0,
        7,  # integers are numbers too
        -12345678901234,
        1.5e-45,  # float32's smallest subnormal
        1.0e20,  # large, yet standardised within float32
        123456.789e-3,
        1e-320,  # a float64 subnormal: 0 in float32
    ],
)
def test_json_windows_decode_exactly_as_numpy_rounds_them(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray], value: float
) -> None:
    """The windows of a JSON body are the float32 values numpy makes of the JSON numbers:
    scores through JSON and through the binary body of those float32 values are equal."""
    series_id, windows = trained
    batch = windows[:2].copy()
    batch[1, 3, 2] = np.float32(value)
    as_list = windows[:2].tolist()
    as_list[1][3][2] = value
    body = orjson.dumps({"series_id": series_id, "windows": as_list})
    assert str(value).encode() in body or repr(value).encode() in body
    as_json = client.post(
        "/v1/score", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    as_binary = post_binary(client, admin, series_id, batch)
    assert as_json.status_code == as_binary.status_code == 200, as_json.text
    for field in ("raw_score", "channel_contributions"):
        assert [r[field] for r in as_json.json()["results"]] == [
            r[field] for r in as_binary.json()["results"]
        ]


def test_a_value_beyond_float32_is_refused_as_infinite(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, windows = trained
    batch = windows[:2].tolist()
    batch[1][2][0] = 1e39
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": batch}, headers=admin
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "windows.1: contains NaN or an infinite value"


def test_a_key_given_twice_counts_once_as_before(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    """Duplicate keys go the way they always went (orjson's: the last one counts)."""
    series_id, windows = trained
    body = b'{"series_id": 987654, "windows": [], "series_id": %d, "windows": %s}' % (
        series_id,
        orjson.dumps(windows[:1].tolist()),
    )
    response = client.post(
        "/v1/score", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["series_id"] == series_id


def test_nan_in_a_binary_body_is_rejected(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, windows = trained
    batch = windows[:3].copy()
    batch[2, 0, 0] = np.nan
    response = post_binary(client, admin, series_id, batch)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("windows.2:")


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 422, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"windows": []}', 422, "series_id"),
        (b'{"series_id": "x", "windows": []}', 422, "series_id"),
        (b'{"series_id": 999999, "windows": [[[0]]]}', 404, "series 999999"),
        (b'{"series_id": 1}', 422, "windows"),
        (b'{"series_id": 1, "start": "yesterday", "end": 1}', 422, "start"),
        (b'{"series_id": 1, "start": 100, "end": 10}', 422, "end"),
        (b'{"series_id": 1, "start": 1e300, "end": 1e301}', 422, "1970 to 2200"),
    ],
)
def test_malformed_bodies_get_clear_4xx(
    client: TestClient,
    admin: Headers,
    trained: tuple[int, np.ndarray],
    body: bytes,
    status: int,
    needle: str,
) -> None:
    series_id, _ = trained
    body = body.replace(b'"series_id": 1,', f'"series_id": {series_id},'.encode())
    body = body.replace(b'"series_id": 1}', f'"series_id": {series_id}}}'.encode())
    response = client.post(
        "/v1/score", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert needle in response.json()["detail"]


def test_too_many_windows_is_refused(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, _ = trained
    windows = np.zeros((1025, 16, 3)).tolist()
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": windows}, headers=admin
    )
    assert response.status_code == 422
    assert "at most 1024" in response.json()["detail"]


def test_a_newly_activated_version_is_picked_up_without_restart(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    settings: Settings,
    trained: tuple[int, np.ndarray],
) -> None:
    series_id, windows = trained
    payload = {"series_id": series_id, "windows": windows[:1].tolist()}
    assert client.post("/v1/score", json=payload, headers=admin).json()["model_version"] == 1
    train_now(sessions, settings.model_copy(update={"activation_tolerance": 10.0}), series_id)
    deadline = time.monotonic() + 5  # the registry polls every 0.2 s in the tests
    version = 1
    while version == 1 and time.monotonic() < deadline:
        response = client.post("/v1/score", json=payload, headers=admin)
        assert response.status_code == 200
        version = response.json()["model_version"]
        time.sleep(0.05)
    assert version == 2


def test_rollback_through_the_api(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    settings: Settings,
    trained: tuple[int, np.ndarray],
) -> None:
    series_id, windows = trained
    train_now(sessions, settings.model_copy(update={"activation_tolerance": 10.0}), series_id)
    listed = client.get(f"/v1/series/{series_id}/models", headers=admin).json()
    assert listed["active_version"] == 2
    assert [v["status"] for v in listed["versions"]] == ["retired", "active"]
    response = client.post(f"/v1/series/{series_id}/models/1/activate", headers=admin)
    assert response.status_code == 200
    assert response.json()["active"] is True
    listed = client.get(f"/v1/series/{series_id}/models", headers=admin).json()
    assert listed["active_version"] == 1
    scored = client.post(
        "/v1/score", json={"series_id": series_id, "windows": windows[:1].tolist()}, headers=admin
    )
    assert scored.json()["model_version"] == 1
    missing = client.post(f"/v1/series/{series_id}/models/7/activate", headers=admin)
    assert missing.status_code == 404


def test_the_threshold_follows_the_number_of_samples(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_headers: Callable[..., Headers],
    trained: tuple[int, np.ndarray],
) -> None:
    """More samples give lower raw scores, so L=16 scoring must use the L=16 calibration."""
    series_id, windows = trained
    headers = make_headers("score")
    payload = {"series_id": series_id, "windows": windows[:2].tolist()}
    thresholds = {}
    for samples in (1, 16):
        with TestClient(create_app(settings.model_copy(update={"score_samples": samples}))) as c:
            thresholds[samples] = c.post("/v1/score", json=payload, headers=headers).json()[
                "threshold"
            ]
    with sessions() as session:
        row = session.scalars(select(ModelVersion)).one()
        model = load_artifact(row.artifact, row.sha256, what="test")
    assert thresholds[1] == pytest.approx(model.threshold(0.99, n_samples=1))
    assert thresholds[16] == pytest.approx(model.threshold(0.99, n_samples=16))
    assert thresholds[1] != thresholds[16]


def test_the_direct_endpoint_answers_exactly_like_the_framework_route(
    client: TestClient,
    make_headers: Callable[..., Headers],
    trained: tuple[int, np.ndarray],
) -> None:
    """POST /v1/score is served ahead of FastAPI's routing (app.api.score_endpoint); FastAPI's
    route for it must give the same answers, errors included, so either can serve it."""
    series_id, windows = trained
    scorer, reader = make_headers("score"), make_headers("read")
    binary = {"Content-Type": "application/octet-stream", "X-Vigil-Series-Id": str(series_id)}
    cases: list[tuple[str, dict[str, object]]] = [
        ("json", {"json": {"series_id": series_id, "windows": windows[:3].tolist()}}),
        (
            "steps",
            {
                "json": {"series_id": series_id, "windows": windows[:2].tolist()},
                "params": {"detail": "steps"},
            },
        ),
        (
            "binary",
            {
                "content": windows[:4].astype("<f4").tobytes(),
                "headers": {**binary, "X-Vigil-Shape": "4,16,3"},
            },
        ),
        (
            "range",
            {
                "json": {
                    "series_id": series_id,
                    "start": "2026-01-01T00:00:00Z",
                    "end": "2026-01-01T00:00:39Z",
                }
            },
        ),
        ("no key", {"json": {"series_id": series_id}, "headers": {"Authorization": ""}}),
        ("bad key", {"json": {}, "headers": {"Authorization": "Bearer vgl_nope"}}),
        ("basic auth", {"json": {}, "headers": {"Authorization": "Basic dXNlcjpwdw=="}}),
        ("wrong scope", {"json": {}, "headers": reader}),
        ("wrong shape", {"json": {"series_id": series_id, "windows": [[[1.0, 2.0]]]}}),
        ("unknown series", {"json": {"series_id": 999_999, "windows": [[[1.0]]]}}),
        ("bad json", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        ("text", {"content": b"1,2,3", "headers": {"Content-Type": "text/csv"}}),
        ("no shape", {"content": b"\0" * 12, "headers": binary}),
        ("empty", {"content": b"", "headers": {"Content-Type": "application/json"}}),
    ]
    app = client.app
    direct_stack = app.score_stack  # type: ignore[attr-defined]
    direct_calls = 0

    async def counted(scope, receive, send):  # type: ignore[no-untyped-def]
        nonlocal direct_calls
        direct_calls += 1
        await direct_stack(scope, receive, send)

    def post(direct: bool, request: dict[str, object]) -> tuple[int, dict[str, str], object]:
        app.score_stack = counted if direct else None  # type: ignore[attr-defined]
        try:
            headers = {**scorer, **request.get("headers", {})}  # type: ignore[dict-item]
            sent = {k: v for k, v in request.items() if k != "headers"}
            response = client.post("/v1/score", headers=headers, **sent)  # type: ignore[arg-type]
        finally:
            app.score_stack = direct_stack  # type: ignore[attr-defined]
        kept = ("content-type", "www-authenticate", "retry-after")
        shown = {k: v for k, v in response.headers.items() if k in kept}
        body = response.json()
        for result in body.get("results", []) if isinstance(body, dict) else []:
            result.pop("score_id")  # a new score record each time
        return response.status_code, shown, body

    for name, request in cases:
        assert post(True, request) == post(False, request), name
    assert direct_calls == len(cases)

    # The direct endpoint is counted under the route's template, like every other route.
    def served() -> float:
        families = text_string_to_metric_families(client.get("/metrics").text)
        family = next(f for f in families if f.name == "vigil_http_requests")
        wanted = {"method": "POST", "route": "/v1/score", "status": "200"}
        return sum(s.value for s in family.samples if wanted.items() <= s.labels.items())

    before = served()
    post(True, cases[0][1])
    assert served() == before + 1


def test_the_score_log_keeps_the_alarm_the_client_was_given(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    trained: tuple[int, np.ndarray],
) -> None:
    """With the series' own quantile (not the model's default) deciding, the stored
    `is_anomaly` that feedback later refers to is the one in the response."""
    series_id, windows = trained
    patched = client.patch(
        f"/v1/series/{series_id}", json={"threshold_quantile": 0.5}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    response = client.post(
        "/v1/score", json={"series_id": series_id, "windows": windows[:12].tolist()}, headers=admin
    )
    assert response.status_code == 200, response.text
    told = {r["score_id"]: r["is_anomaly"] for r in response.json()["results"]}
    assert 0 < sum(told.values()) < len(told)  # the median threshold splits the windows
    stored: dict[str, bool] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(stored) < len(told):
        time.sleep(0.05)
        with sessions() as session:
            stored = {
                str(r.id): r.is_anomaly
                for r in session.scalars(select(ScoreRecord))
                if str(r.id) in told
            }
    assert stored == told


def test_regular_json_windows_are_copied_from_the_parsed_document() -> None:
    """The fast path is the one taken: `windows` stays in simdjson's document and comes out
    as the same float32 array the lists would give."""
    windows = np.random.default_rng(3).normal(size=(4, 16, 3)).astype(np.float32)
    body = orjson.dumps({"series_id": 1, "windows": windows.tolist()})
    payload = score_codecs.parse_json(body)
    assert payload["series_id"] == 1
    assert isinstance(payload["windows"], simdjson.Array)
    got = score_codecs._regular_windows(payload["windows"], 16, 3, body.count(b"["))
    assert got is not None and got.dtype == np.float32
    assert np.array_equal(got, windows)


def test_class_probabilities_are_a_distribution_over_the_series_classes(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """The series' own classes that had labels sum to 1; feedback classes come apart."""
    series_id, stream = trained_series(sessions, settings)
    day = client.get(f"/v1/series/{series_id}", headers=admin).json()
    assert "idle" not in day["classes"]
    patched = client.patch(
        f"/v1/series/{series_id}", json={"classes": {"idle": "normal"}}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    spans = {"idle": (0, 100), "anomaly": (120, 180), "false_positive": (200, 260)}
    for label, (first, last) in spans.items():
        created = client.post(
            "/v1/labels",
            json={
                "series_id": series_id,
                "start": float(stream.ts[first]) / 1e6,
                "end": float(stream.ts[last]) / 1e6,
                "label": label,
            },
            headers=admin,
        )
        assert created.status_code == 201, created.text
    train_now(sessions, settings, series_id)
    # Whether the promotion gate took version 2 is beside the point here: activate it by hand.
    activated = client.post(f"/v1/series/{series_id}/models/2/activate", headers=admin)
    assert activated.status_code == 200, activated.text
    windows = windows_of(stream, window_size=16, stride=8)
    body = client.post(
        "/v1/score", json={"series_id": series_id, "windows": windows[:5].tolist()}, headers=admin
    ).json()
    deadline = time.monotonic() + 5
    while body["model_version"] != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        body = client.post(
            "/v1/score",
            json={"series_id": series_id, "windows": windows[:5].tolist()},
            headers=admin,
        ).json()
    assert body["model_version"] == 2
    for result in body["results"]:
        probabilities = result["class_probabilities"]
        assert set(probabilities) == {"idle", "anomaly"}
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert set(result["feedback_probabilities"]) == {"false_positive"}
        assert 0.0 <= result["feedback_probabilities"]["false_positive"] <= 1.0


def _first_cell(windows: np.ndarray, cell: object) -> list[object]:
    body: list[object] = windows[:2].tolist()
    body[0][0][0] = cell  # type: ignore[index]
    return body


@pytest.mark.parametrize(
    ("cell", "kind"),
    [
        ([1, 2], "an array"),  # numbers too many for the step: reshape failed, 500
        ([1], "an array"),  # as many numbers as cells: was read as 1.0
        ("1", "a string"),
        (True, "a boolean"),
        (None, "null"),
    ],
)
def test_every_cell_is_a_json_number(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray], cell: object, kind: str
) -> None:
    """Issue 12, item 4: `[[1,2],0,0]` as a first step gave a 500; "1", true and [1] were
    taken as 1.0."""
    series_id, windows = trained
    for direct in (True, False):  # the lean endpoint and FastAPI's route
        client.app.score_stack, stack = (  # type: ignore[attr-defined]
            client.app.score_stack if direct else None,  # type: ignore[attr-defined]
            client.app.score_stack,  # type: ignore[attr-defined]
        )
        try:
            response = client.post(
                "/v1/score",
                json={"series_id": series_id, "windows": _first_cell(windows, cell)},
                headers=admin,
            )
        finally:
            client.app.score_stack = stack  # type: ignore[attr-defined]
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == f"windows.0.0.0: must be a number; got {kind}"


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"start": 1_767_225_600, "end": 1_767_225_700}, "start", "not both"),
        ({"end": 1_767_225_700}, "end", "not both"),
        ({"threshold": 0.1}, "threshold", "is not a member"),
        ({"windows ": []}, "windows ", "is not a member"),
    ],
)
def test_a_scoring_body_has_the_members_of_one_request_kind(
    client: TestClient,
    admin: Headers,
    trained: tuple[int, np.ndarray],
    extra: dict[str, object],
    field: str,
    fragment: str,
) -> None:
    series_id, windows = trained
    body = {"series_id": series_id, "windows": windows[:1].tolist(), **extra}
    response = client.post("/v1/score", json=body, headers=admin)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: ") and fragment in detail


@pytest.mark.parametrize("shape", ["+1,+16,+3", "1, 16, 3", "1,16,3,", "1_0,16,3", "0x1,16,3"])
def test_the_shape_header_is_digits_and_commas_only(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray], shape: str
) -> None:
    series_id, windows = trained
    response = client.post(
        "/v1/score",
        content=windows[:1].astype("<f4").tobytes(),
        headers={
            **admin,
            "Content-Type": "application/octet-stream",
            "X-Vigil-Series-Id": str(series_id),
            "X-Vigil-Shape": shape,
        },
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("X-Vigil-Shape: header must be `N,T,F`")


def test_step_detail_is_bounded_per_request(
    settings: Settings, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    """Per-step detail grows the answer by windows x steps numbers: over
    VIGIL_MAX_STEP_DETAIL it is a 422 naming `detail`, and the same windows without the
    detail, or fewer of them with it, are scored."""
    series_id, windows = trained  # windows of 16 steps
    bounded = settings.model_copy(update={"max_step_detail": 40})
    with TestClient(create_app(bounded)) as client:
        body = {"series_id": series_id, "windows": windows[:3].tolist()}
        refused = client.post("/v1/score", params={"detail": "steps"}, json=body, headers=admin)
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("detail: per-step detail covers at most 40")
        assert "48" in refused.json()["detail"]
        assert client.post("/v1/score", json=body, headers=admin).status_code == 200
        two = {"series_id": series_id, "windows": windows[:2].tolist()}
        answer = client.post("/v1/score", params={"detail": "steps"}, json=two, headers=admin)
        assert answer.status_code == 200
        assert all(len(r["step_contributions"]) == 16 for r in answer.json()["results"])


def test_detail_takes_only_steps(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, windows = trained
    response = client.post(
        "/v1/score",
        params={"detail": "everything"},
        json={"series_id": series_id, "windows": windows[:1].tolist()},
        headers=admin,
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("detail: must be `steps`")


def test_a_stuck_channel_raises_an_alarm_that_names_it(
    client: TestClient, admin: Headers, trained: tuple[int, np.ndarray]
) -> None:
    series_id, windows = trained
    stuck = windows[:2].copy()
    stuck[1, :, 1] = stuck[1, 0, 1]  # channel c1 frozen at its first reading
    body = client.post(
        "/v1/score", json={"series_id": series_id, "windows": stuck.tolist()}, headers=admin
    ).json()
    first, second = body["results"]
    assert first["data_quality"] == []
    assert second["data_quality"] == [{"check": "stuck", "channel": "c1"}]
    assert second["is_anomaly"] is True


def test_a_request_scored_in_pieces_answers_and_logs_like_one_call(
    client: TestClient,
    admin: Headers,
    settings: Settings,
    sessions: sessionmaker[Session],
    trained: tuple[int, np.ndarray],
) -> None:
    """VIGIL_SCORE_PIECE_STEPS below the request's window steps: the stored range is scored a
    piece of 2 windows at a time, and the answer and the score log are those of one call."""
    series_id, _ = trained
    body = {"series_id": series_id, "start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:19Z"}
    whole = client.post("/v1/score", json=body, headers=admin)
    assert whole.status_code == 200, whole.text
    with TestClient(create_app(settings.model_copy(update={"score_piece_steps": 32}))) as pieces:
        split = pieces.post("/v1/score", json=body, headers=admin)
        assert pieces.app.state.runtime.batcher.model_calls == 5  # type: ignore[attr-defined]
    assert split.status_code == 200, split.text
    expected, results = whole.json()["results"], split.json()["results"]
    assert len(results) == len(expected) == 9  # 80 points, windows of 16 every 8
    for got, want in zip(results, expected, strict=True):
        assert (got["start"], got["end"]) == (want["start"], want["end"])
        assert got["raw_score"] == pytest.approx(want["raw_score"], rel=1e-5)
        assert got["is_anomaly"] == want["is_anomaly"]
    ids = [r["score_id"] for r in results]
    assert len(set(ids)) == len(ids)
    with sessions() as session:
        logged = session.scalars(select(ScoreRecord.id)).all()
    assert {str(i) for i in logged} >= set(ids)
