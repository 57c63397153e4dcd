"""Time is time: missing values, late points and gaps in ingestion, training and scoring."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import ModelVersion, Point, Series
from app.main import create_app
from app.schemas.common import format_us
from app.training.pipeline import build_dataset, cut_windows, load_points, recorded_interval
from models import TrainedModel
from tests.utils.api_helpers import Headers, assert_problem, create_series
from tests.utils.stream import STEP_US, Stream, insert_points, make_stream
from tests.utils.stream import create_series as seed_series
from tests.utils.trained import read_job, train_now

T0 = 1767225600  # 2026-01-01T00:00:00Z, epoch seconds
GAP_US = 3600 * 1_000_000


def stored(sessions: sessionmaker[Session], series_id: int) -> list[tuple[int, list[float]]]:
    with sessions() as session:
        rows = session.execute(
            select(Point.ts, Point.values).where(Point.series_id == series_id).order_by(Point.ts)
        ).all()
    return [(ts, np.frombuffer(blob, dtype="<f8").tolist()) for ts, blob in rows]


# -- missing values at ingestion ----------------------------------------------------------------
def test_json_null_and_an_empty_csv_cell_are_stored_as_missing(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session]
) -> None:
    series = create_series(client, admin)
    path = f"/v1/series/{series['id']}/points"
    body = {"timestamps": [T0, T0 + 1], "values": [[1.0, None, 3.0], [None, None, None]]}
    assert client.post(path, json=body, headers=admin).json()["inserted"] == 2
    text = "timestamp,flow,pressure,temperature\n1767225602,,2.5,\n1767225603,1, ,3\n"
    csv = client.post(path, content=text, headers={**admin, "Content-Type": "text/csv"})
    assert csv.status_code == 200, csv.text
    rows = stored(sessions, series["id"])
    nan_mask = [[math.isnan(v) for v in values] for _, values in rows]
    assert nan_mask == [
        [False, True, False],
        [True, True, True],
        [True, False, True],
        [False, True, False],
    ]
    read = client.get(path, headers=admin).json()
    assert read["values"][0] == [1.0, None, 3.0]
    assert read["values"][2] == [None, 2.5, None]
    assert read["next_cursor"] is None


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ('"hot"', "values[0][1]: must be a finite number or null (missing)"),
        ("true", "not a boolean"),
        ("[1]", "not an array"),
        ("1e400", "infinity"),
    ],
)
def test_other_json_cells_are_still_refused(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session], cell: str, fragment: str
) -> None:
    series = create_series(client, admin)
    body = f'{{"timestamps": [{T0}], "values": [[1, {cell}, 3]]}}'
    response = client.post(
        f"/v1/series/{series['id']}/points",
        content=body,
        headers={**admin, "Content-Type": "application/json"},
    )
    assert_problem(response, 422, fragment)
    assert stored(sessions, series["id"]) == []


@pytest.mark.parametrize("cell", ["NaN", "nan", "null", "inf", "abc"])
def test_csv_text_is_not_a_missing_value(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session], cell: str
) -> None:
    series = create_series(client, admin)
    text = f"timestamp,flow,pressure,temperature\n{T0},1,{cell},3\n"
    response = client.post(
        f"/v1/series/{series['id']}/points",
        content=text,
        headers={**admin, "Content-Type": "text/csv"},
    )
    assert_problem(response, 422, "line 2, column 'pressure'", repr(cell))
    assert stored(sessions, series["id"]) == []


# -- late and out-of-order points -----------------------------------------------------------------
def test_a_late_batch_of_older_points_takes_its_place_in_time(
    client: TestClient, admin: Headers, sessions: sessionmaker[Session], settings: Settings
) -> None:
    series = create_series(client, admin, window_size=4, stride=2)
    path = f"/v1/series/{series['id']}/points"
    even = [T0 + 2 * i for i in range(10)]
    odd = [T0 + 2 * i + 1 for i in reversed(range(10))]  # older ones, sent later, reversed
    for stamps in (even, odd):
        body = {"timestamps": stamps, "values": [[float(t - T0)] * 3 for t in stamps]}
        assert client.post(path, json=body, headers=admin).status_code == 200
    read = client.get(path, headers=admin).json()
    assert [row[0] for row in read["values"]] == [float(i) for i in range(20)]
    with sessions() as session:
        ts, values = load_points(
            session=session, series_id=series["id"], n_channels=3, max_points=100
        )
        assert np.all(np.diff(ts) == STEP_US)
        assert values[:, 0].tolist() == [float(i) for i in range(20)]
        stored_series = session.get(Series, series["id"])
        assert stored_series is not None
        dataset = build_dataset(
            session=session, series=stored_series, settings=settings, previous=()
        )
    every = np.concatenate([dataset.train.windows, dataset.validation.windows])
    for window in every:  # each window is 4 consecutive seconds, in time order
        assert np.all(np.diff(window[:, 0]) == 1.0)


# -- gaps, missing values and paging through a trained series ----------------------------------
def gappy_stream(seed: int) -> Stream:
    """400 points a second apart with an hour's pause after the 200th, and 2 % of the values
    missing at random."""
    stream = make_stream(400, seed=seed)
    stream.ts = stream.ts.copy()
    stream.ts[200:] += GAP_US
    rng = np.random.default_rng(seed + 100)
    stream.values[rng.random(stream.values.shape) < 0.02] = np.nan
    return stream


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_series_with_a_gap_and_missing_values_trains_scores_and_pages(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_headers: Callable[..., Headers],
    threads: int,
    seed: int,
) -> None:
    # 120 steps: the suite's 16-40 step budget is too short for batches of 16 windows to
    # learn this stream (seed 1 flagged half its windows); the property needs a fitted model.
    settings = settings.model_copy(
        update={
            "train_threads": threads,
            "max_score_windows": 7,
            "train_min_steps": 120,
            "train_max_steps": 120,
        }
    )
    series_id = seed_series(sessions, window_size=16, stride=8)
    stream = gappy_stream(seed)
    insert_points(sessions, series_id, stream)
    job = read_job(sessions, train_now(sessions, settings, series_id))
    assert job.status == "succeeded", job.error
    assert job.metrics is not None
    assert job.metrics["gaps"] == 1
    # Two runs of 200 points: 24 windows each, none across the pause.
    assert job.metrics["windows"] == 48
    with sessions() as session:
        blob = session.scalar(
            select(ModelVersion.artifact).where(ModelVersion.series_id == series_id)
        )
    model = TrainedModel.from_bytes(blob)
    assert recorded_interval(model) == STEP_US  # the gap limit at scoring: 3 s
    model.metadata.pop("sampling_interval_us")
    assert recorded_interval(model) is None  # an older artifact: the points' median is used
    # 64 more points after the end, two windows' worth of them missing entirely.
    tail = make_stream(64, seed=seed)
    tail.ts = stream.ts[-1] + STEP_US * (1 + np.arange(64, dtype=np.int64))
    tail.values[16:32] = np.nan
    insert_points(sessions, series_id, tail)

    headers = make_headers("score", "read")
    results: list[dict[str, Any]] = []
    cursors = 0
    with TestClient(create_app(settings)) as client:
        body: dict[str, Any] = {"series_id": series_id, "start": T0, "end": T0 + 10**6}
        while True:
            response = client.post("/v1/score", json=body, headers=headers)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["results"]) <= 7
            results.extend(page["results"])
            if page["next_cursor"] is None:
                break
            cursors += 1
            body = {**body, "cursor": page["next_cursor"]}
        bad = client.post("/v1/score", json={**body, "cursor": "nope"}, headers=headers)
        assert_problem(bad, 422, "cursor")

    # Every window of the range exactly once, in order, none across the pause.
    all_ts = np.concatenate([stream.ts, tail.ts])
    expected = cut_windows(all_ts, window_size=16, stride=8, max_gap_us=3 * STEP_US)
    assert [r["start"] for r in results] == [format_us(int(all_ts[s])) for s in expected]
    assert len(results) == 24 + 32 and cursors == math.ceil(56 / 7) - 1
    assert all(
        r["end"] == format_us(int(all_ts[s + 15])) for r, s in zip(results, expected, strict=True)
    )

    scored = [r for r in results if r["scored"]]
    skipped = [r for r in results if not r["scored"]]
    # The windows that hold the missing stretch: 8/16, 16/16 and 8/16 of their rows.
    assert len(skipped) == 3
    for result in skipped:
        assert result["missing_fraction"] > settings.max_missing_fraction
        assert result["is_anomaly"] is False
        assert result["score"] is None and result["score_id"] is None
        assert {c["check"] for c in result["data_quality"]} == {"missing_data"}
    # Scattered missing values are imputed and scored like the rest.
    assert any(0 < r["missing_fraction"] <= 0.2 for r in scored)
    assert all(math.isfinite(r["score"]) and r["score_id"] for r in scored)
    # The stream is normal: few alarms, whatever the gaps and the missing values.
    assert sum(r["is_anomaly"] for r in scored) <= len(scored) // 4


def test_too_much_missing_data_leaves_training_short_and_says_so(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    series_id = seed_series(sessions, window_size=16, stride=8)
    stream = make_stream(120)
    stream.values[::2] = np.nan  # half of every window
    insert_points(sessions, series_id, stream)
    job = read_job(sessions, train_now(sessions, settings, series_id))
    assert job.status == "failed"
    assert job.error is not None and "VIGIL_MAX_MISSING_FRACTION" in job.error


def test_max_gap_on_the_series_overrides_the_derived_limit(
    client: TestClient, admin: Headers
) -> None:
    series = create_series(client, admin, max_gap=30)
    assert series["max_gap"] == 30.0
    path = f"/v1/series/{series['id']}"
    assert client.patch(path, json={"max_gap": 5.5}, headers=admin).json()["max_gap"] == 5.5
    reset = client.patch(path, json={"reset_max_gap": True}, headers=admin).json()
    assert reset["max_gap"] is None
    assert_problem(client.patch(path, json={"max_gap": 0}, headers=admin), 422, "max_gap")
    assert_problem(client.patch(path, json={"max_gap": "1"}, headers=admin), 422, "max_gap")
