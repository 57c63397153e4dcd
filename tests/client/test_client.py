"""vigil_client against a real `vigil serve`: every v1 operation there is on this service,
round trip, with typed results and typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from vigil_client import (
    AsyncClient,
    Client,
    Conflict,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from vigil_client.models import Job, LabelCreated, ScoreResponse, Series

from tests.client.conftest import LiveVigil, unique
from tests.utils.stream import make_stream, windows_of

CHANNELS = ["flow", "pressure", "temperature"]
WINDOW, STRIDE = 16, 8
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stamps(n: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(seconds=i) for i in range(n)]


def new_series(vigil: Client, **extra: object) -> Series:
    return vigil.create_series(
        name=unique("pump"),
        channels=CHANNELS,
        window_size=WINDOW,
        stride=STRIDE,
        classes={"bearing_wear": "anomaly"},
        **extra,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Trained:
    series: Series
    values: np.ndarray  # (P, F) the stored points
    job: Job


@pytest.fixture(scope="module")
def trained(live: LiveVigil) -> Iterator[Trained]:
    """One series with 400 points of a healthy stream and a trained model."""
    stream = make_stream(400, channels=3, seed=5)
    values = stream.values.astype(np.float32).astype(np.float64)  # exact in float32 too
    with live.client() as vigil:
        series = new_series(vigil)
        vigil.ingest_points(series.id, stamps(len(values)), values)
        job = vigil.wait_for_job(vigil.train(series.id).id, timeout=240)
        yield Trained(series=series, values=values, job=job)


# -- health and errors -------------------------------------------------------------------------


def test_health_ready_and_openapi(vigil: Client) -> None:
    assert vigil.health() is True
    ready = vigil.ready()
    assert ready.ok and ready.database == "ok" and ready.revision
    assert "/v1/series" in vigil.openapi()["paths"]


def test_a_422_names_the_field(vigil: Client) -> None:
    with pytest.raises(InvalidInput) as caught:
        vigil.create_series(name=unique(), channels=CHANNELS, window_size=1, stride=1)
    error = caught.value
    assert error.status == 422
    assert error.field == "window_size"
    assert error.problem["status"] == 422 and "window_size" in error.detail
    with pytest.raises(InvalidInput) as caught:
        vigil.list_series(limit=0)
    assert caught.value.field == "limit"


def test_errors_are_typed(vigil: Client, live: LiveVigil) -> None:
    series = new_series(vigil)
    with pytest.raises(Conflict) as conflict:
        vigil.create_series(name=series.name, channels=CHANNELS, window_size=WINDOW, stride=STRIDE)
    assert conflict.value.status == 409 and conflict.value.field is None
    with pytest.raises(NotFound) as missing:
        vigil.get_series(10**9)
    assert missing.value.status == 404 and "does not exist" in missing.value.detail
    with Client(live.url, api_key="not-a-key-" + "x" * 30) as stranger, pytest.raises(Unauthorized):
        stranger.list_series()


# -- series --------------------------------------------------------------------------------------


def test_series_round_trip_and_paging(vigil: Client) -> None:
    created = [new_series(vigil, threshold_quantile=0.95) for _ in range(5)]
    first = created[0]
    assert first.channels == CHANNELS and first.window_size == WINDOW and first.stride == STRIDE
    assert first.classes["bearing_wear"] == "anomaly" and first.classes["normal"] == "normal"
    assert vigil.get_series(first.id) == first

    updated = vigil.update_series(
        first.id, threshold_quantile=0.9, classes={"seal_leak": "anomaly"}
    )
    assert updated.threshold_quantile == pytest.approx(0.9)
    assert updated.classes["seal_leak"] == "anomaly"

    page = vigil.list_series(limit=2)
    assert len(page.items) == 2 and page.next_cursor
    every = list(vigil.iter_series(page_size=2))
    ids = [s.id for s in every]
    assert len(ids) == len(set(ids)), "no series twice across pages"
    assert {s.id for s in created} <= set(ids)


# -- points --------------------------------------------------------------------------------------


def test_points_json_and_csv_round_trip(vigil: Client) -> None:
    series = new_series(vigil)
    values = np.arange(30, dtype=np.float64).reshape(10, 3) / 4
    result = vigil.ingest_points(series.id, stamps(10), values)
    assert (result.received, result.inserted, result.unchanged) == (10, 10, 0)
    again = vigil.ingest_points(series.id, stamps(10), values.tolist())
    assert (again.inserted, again.unchanged) == (0, 10)

    csv = "timestamp,temperature,flow,pressure\n2026-01-01T00:00:10Z,9,1.5,2\n"
    assert vigil.ingest_csv(series.id, csv).inserted == 1

    points = vigil.read_points(series.id, start=T0, end=T0 + timedelta(seconds=10))
    assert points.timestamps[0] == T0 and len(points.timestamps) == 11
    assert points.values[3] == values[3].tolist()
    assert points.values[10] == [1.5, 2.0, 9.0], "CSV columns go to their channels by name"
    assert len(vigil.read_points(series.id, limit=4).values) == 4


def test_dataframe_ingest_and_read_back(vigil: Client) -> None:
    series = new_series(vigil)
    index = pd.date_range("2026-02-01 08:00", periods=250, freq="500ms", tz="Europe/Vienna")
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        rng.normal(size=(250, 3)), index=index, columns=["temperature", "flow", "pressure"]
    )
    result = vigil.ingest_frame(series.id, frame, rows_per_request=100)  # 3 requests
    assert (result.received, result.inserted) == (250, 250)

    back = vigil.read_frame(series.id, page_size=100)  # three pages
    assert list(back.columns) == CHANNELS
    assert back.index.tz is not None and back.index[0] == index[0]
    pd.testing.assert_frame_equal(
        back[["temperature", "flow", "pressure"]],
        frame.tz_convert("UTC"),
        check_names=False,
        check_freq=False,
        rtol=0,
        atol=0,
    )
    naive = frame.tz_convert("UTC").tz_localize(None)  # a naive index is taken as UTC
    assert vigil.ingest_frame(series.id, naive).unchanged == 250


# -- training, jobs, models ----------------------------------------------------------------------


def test_training_jobs_and_models(vigil: Client, trained: Trained) -> None:
    job = trained.job
    assert job.status == "succeeded" and job.model_version == 1 and job.done
    assert vigil.get_job(job.id) == job
    jobs = vigil.list_jobs(series_id=trained.series.id)
    assert [j.id for j in jobs.items] == [job.id]
    assert job.id in {j.id for j in vigil.iter_jobs(status="succeeded", page_size=1)}

    models = vigil.list_models(trained.series.id)
    assert models.active_version == 1 and models.versions[0].active
    activated = vigil.activate_model(trained.series.id, 1)
    assert activated.version == 1 and activated.status == "active"

    empty = new_series(vigil)
    with pytest.raises(InvalidInput) as caught:
        vigil.train(empty.id)
    assert "training needs" in caught.value.detail


def test_train_with_one_idempotency_key_queues_one_job(vigil: Client, trained: Trained) -> None:
    first = vigil.train(trained.series.id, idempotency_key="client-test-train-1")
    again = vigil.train(trained.series.id, idempotency_key="client-test-train-1")
    assert again.id == first.id
    vigil.wait_for_job(first.id, timeout=240)


# -- scoring -------------------------------------------------------------------------------------


def test_binary_scoring_from_numpy_equals_json_scoring(vigil: Client, trained: Trained) -> None:
    windows = windows_of(
        make_stream(200, channels=3, seed=9, faults=[(120, 160)]), window_size=WINDOW, stride=STRIDE
    )
    assert windows.dtype == np.float32 and windows.shape == (24, WINDOW, 3)
    binary = vigil.score(trained.series.id, windows)
    as_json = vigil.score_json(trained.series.id, windows)
    from_lists = vigil.score(trained.series.id, windows.tolist())
    assert isinstance(binary, ScoreResponse) and binary.series_id == trained.series.id
    assert len(binary.results) == 24
    for b, j, lists in zip(binary.results, as_json.results, from_lists.results, strict=True):
        assert b.score == pytest.approx(j.score, rel=1e-5, abs=1e-6)
        assert b.adjusted_score == pytest.approx(lists.adjusted_score, rel=1e-5, abs=1e-6)
        assert b.is_anomaly == j.is_anomaly
        assert set(b.channel_contributions) == set(CHANNELS)
    assert any(r.is_anomaly for r in binary.results[14:19]), "the fault's windows alarm"

    one = vigil.score(trained.series.id, windows[0], detail="steps")  # a single (T, F) window
    assert len(one.results) == 1 and one.results[0].step_contributions is not None
    frame = binary.to_frame()
    assert len(frame) == 24 and frame.attrs["model_version"] == binary.model_version
    assert {"score_id", "adjusted_score", "is_anomaly", "contribution.flow"} <= set(frame.columns)


def test_score_a_stored_range(vigil: Client, trained: Trained) -> None:
    scored = vigil.score_range(
        trained.series.id, start=T0, end=T0 + timedelta(seconds=WINDOW + STRIDE - 1)
    )
    assert len(scored.results) == 2
    assert scored.results[0].start == T0


# -- labels --------------------------------------------------------------------------------------


def test_labels_round_trip(vigil: Client, trained: Trained) -> None:
    series_id = trained.series.id
    ranged = vigil.label_range(
        series_id,
        start=T0 + timedelta(seconds=100),
        end=T0 + timedelta(seconds=140),
        label="bearing_wear",
        author="client-test",
        note="confirmed",
    )
    assert isinstance(ranged, LabelCreated)
    assert ranged.points == 41 and ranged.label == "bearing_wear" and ranged.warnings == []

    result = vigil.score(trained.series.id, trained.values[:WINDOW][np.newaxis]).results[0]
    key = f"feedback-{result.score_id}"
    feedback = vigil.label_score(result.score_id, label="false_negative", idempotency_key=key)
    replay = vigil.label_score(result.score_id, label="false_negative", idempotency_key=key)
    assert replay.id == feedback.id, "one Idempotency-Key, one label"
    assert feedback.score_id == result.score_id

    assert vigil.get_label(ranged.id).note == "confirmed"
    listed = vigil.list_labels(series_id=series_id, limit=1)
    assert len(listed.items) == 1 and listed.next_cursor
    assert {lab.id for lab in vigil.iter_labels(series_id=series_id, page_size=1)} == {
        ranged.id,
        feedback.id,
    }
    assert [lab.id for lab in vigil.iter_labels(label="bearing_wear")] == [ranged.id]

    vigil.delete_label(feedback.id)
    assert vigil.get_label(feedback.id).deleted_at is not None
    assert [lab.id for lab in vigil.iter_labels(series_id=series_id)] == [ranged.id]
    deleted = vigil.iter_labels(series_id=series_id, include_deleted=True)
    assert {lab.id for lab in deleted} == {ranged.id, feedback.id}


# -- the async client ----------------------------------------------------------------------------


def test_the_async_client_does_the_same(live: LiveVigil, trained: Trained) -> None:
    async def main() -> None:
        async with AsyncClient(live.url, api_key=live.key) as vigil:
            assert await vigil.health()
            names = [unique("async") for _ in range(3)]
            created = await asyncio.gather(
                *(
                    vigil.create_series(
                        name=name, channels=CHANNELS, window_size=WINDOW, stride=STRIDE
                    )
                    for name in names
                )
            )
            seen = [s.name async for s in vigil.iter_series(page_size=2)]
            assert set(names) <= set(seen) and len(seen) == len(set(seen))
            with pytest.raises(InvalidInput) as caught:
                await vigil.update_series(created[0].id, threshold_quantile=1.5)
            assert caught.value.field == "threshold_quantile"
            windows = trained.values[: 2 * WINDOW].reshape(2, WINDOW, 3)
            binary, as_json = await asyncio.gather(
                vigil.score(trained.series.id, windows),
                vigil.score_json(trained.series.id, windows),
            )
            for b, j in zip(binary.results, as_json.results, strict=True):
                assert b.score == pytest.approx(j.score, rel=1e-5, abs=1e-6)
            job = await vigil.get_job(trained.job.id)
            assert job == trained.job
            frame = await vigil.read_frame(
                trained.series.id, start=T0, end=T0 + timedelta(seconds=4), page_size=2
            )
            assert frame.shape == (5, 3)
            assert frame.to_numpy().tolist() == trained.values[:5].tolist()

    asyncio.run(main())
