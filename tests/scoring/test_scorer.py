"""The scoring child process (app/scoring/process.py): same scores as the model in-process, its own
model cache, and what happens when it fails or dies."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import ScoreRecord
from app.errors import ServiceUnavailable
from app.main import create_app
from app.scoring.log import NO_SPAN
from app.scoring.process import ScorerProcess
from models import BUILTIN_CLASSES, ScoreBatch, TrainedModel, TrainingData, fit
from tests.models.models_testkit import CHANNELS, inject_faults, quick, sine_windows, tiny_config
from tests.utils.stream import create_series, windows_of
from tests.utils.trained import trained_series

FIELDS = [f.name for f in dataclasses.fields(ScoreBatch) if f.name != "threshold"]


@pytest.fixture(scope="module")
def models() -> list[TrainedModel]:
    return [
        fit(
            TrainingData(sine_windows(32, seed=seed), None),
            classes=BUILTIN_CLASSES,
            channels=CHANNELS,
            model_config=tiny_config(),
            train_config=quick(epochs=1, seed=seed),
        )
        for seed in (0, 1)
    ]


def assert_same(got: ScoreBatch, want: ScoreBatch) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.threshold == want.threshold


def run(coroutine_function: Callable[[ScorerProcess], object], **kwargs: object) -> None:
    async def main() -> None:
        scorer = ScorerProcess(**{"threads": 1, "cache_size": 4, **kwargs})  # type: ignore[arg-type]
        try:
            await coroutine_function(scorer)  # type: ignore[misc]
        finally:
            await scorer.close()

    asyncio.run(main())


def test_the_child_scores_exactly_as_the_model_does(models: list[TrainedModel]) -> None:
    """The first batch finds the model missing in the child and sends it; the second finds it
    cached. Both give, bit for bit, what TrainedModel.score gives in this process."""
    windows = inject_faults(sine_windows(7, seed=3))

    async def check(scorer: ScorerProcess) -> None:
        for n_samples in (1, 1, 4):
            got, _, _ = await scorer.score((1, 1), models[0], windows, n_samples=n_samples)
            assert_same(got, models[0].score(windows, n_samples=n_samples))
        assert scorer.started == 1

    run(check)


def test_a_model_the_child_dropped_is_sent_again(models: list[TrainedModel]) -> None:
    windows = sine_windows(3, seed=4)

    async def check(scorer: ScorerProcess) -> None:
        for key, model in [((1, 1), models[0]), ((2, 1), models[1])] * 2:
            got, _, _ = await scorer.score(key, model, windows, n_samples=1)
            assert_same(got, model.score(windows))
        assert scorer.started == 1

    run(check, cache_size=1)


def test_a_failing_batch_fails_alone_and_the_child_lives_on(models: list[TrainedModel]) -> None:
    async def check(scorer: ScorerProcess) -> None:
        wrong = np.zeros((2, 5, 3), dtype=np.float32)  # the model's windows are 16 steps long
        with pytest.raises(RuntimeError, match="InvalidInput"):
            await scorer.score((1, 1), models[0], wrong, n_samples=1)
        windows = sine_windows(2, seed=5)
        got, _, _ = await scorer.score((1, 1), models[0], windows, n_samples=1)
        assert_same(got, models[0].score(windows))
        assert scorer.started == 1

    run(check)


def test_a_killed_child_fails_its_batch_with_503_and_the_next_batch_starts_another(
    models: list[TrainedModel],
) -> None:
    windows = sine_windows(4, seed=6)

    async def check(scorer: ScorerProcess) -> None:
        await scorer.score((1, 1), models[0], windows[:1], n_samples=1)  # loaded, warm
        pid = scorer.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it cannot answer the next batch ...
        pending = asyncio.ensure_future(scorer.score((1, 1), models[0], windows, n_samples=1))
        await asyncio.sleep(0.2)
        assert not pending.done()
        os.kill(pid, signal.SIGKILL)  # ... and dies with it in flight
        with pytest.raises(ServiceUnavailable, match="scoring process exited"):
            await pending
        got, _, _ = await scorer.score((1, 1), models[0], windows[:2], n_samples=1)
        assert_same(got, models[0].score(windows[:2]))
        assert scorer.started == 2 and scorer.pid != pid

    run(check)


def test_the_service_scores_the_same_through_the_child_as_on_a_thread(
    sessions: sessionmaker[Session], settings: Settings, make_headers: Callable[..., dict[str, str]]
) -> None:
    """POST /v1/score with the default `score_process=true` answers exactly as in-process
    scoring does (the score ids aside), and the child goes when the app stops."""
    series_id, stream = trained_series(sessions, settings)
    windows = windows_of(stream, window_size=16, stride=8)[:5].tolist()
    headers = make_headers("score")
    bodies = []
    for in_child in (True, False):
        app = create_app(settings.model_copy(update={"score_process": in_child}))
        with TestClient(app) as client:
            response = client.post(
                "/v1/score", json={"series_id": series_id, "windows": windows}, headers=headers
            )
            scorer = app.state.runtime.batcher.scorer
            pid = scorer.pid if scorer is not None else None
        assert response.status_code == 200, response.text
        body = response.json()
        for result in body["results"]:
            result.pop("score_id")
        bodies.append(body)
        if in_child:
            assert pid is not None
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # reaped at shutdown
    assert bodies[0] == bodies[1]


def test_the_child_logs_each_window_with_its_own_threshold_and_span(
    models: list[TrainedModel], sessions: sessionmaker[Session], database_url: str
) -> None:
    """Two requests merged into one batch: each window is flagged against its own request's
    threshold, and the ids and flags the parent gets back are the rows the child writes, on
    demand (flush) and, for what it still holds, when its input ends."""
    series_id = create_series(sessions, name="logged", channels=len(CHANNELS))
    windows = sine_windows(5, seed=7)  # in range: no data-quality alarm muddles the flags
    model = models[0]
    want = model.score(windows)
    assert not want.quality.any()
    # The first request's threshold sits between its scores, so it flags some and not others.
    first = float(np.median(want.adjusted_score[:3]))
    thresholds = np.array([first] * 3 + [np.inf] * 2)
    spans = np.array([[10, 25], [20, 35], [30, 45], [NO_SPAN, NO_SPAN], [NO_SPAN, NO_SPAN]])
    held: list[object] = []

    async def check(scorer: ScorerProcess) -> None:
        batch, ids, flagged = await scorer.score(
            (series_id, 3), model, windows, n_samples=1, thresholds=thresholds, spans=spans
        )
        assert_same(batch, want)
        assert flagged is not None
        assert flagged.tolist() == (want.adjusted_score > thresholds).tolist()
        assert 0 < sum(flagged[:3]) < 3 and not flagged[3:].any()
        assert await scorer.flush() == 5
        assert await scorer.flush() == 0
        with sessions() as session:
            rows = {r.id: r for r in session.scalars(select(ScoreRecord))}
        assert set(rows) == set(ids)
        for i, score_id in enumerate(ids):
            row = rows[score_id]
            assert np.array_equal(
                np.frombuffer(row.window, "<f4").reshape(windows[i].shape), windows[i]
            )
            assert row.raw_score == float(want.raw_score[i])
            assert row.adjusted_score == float(want.adjusted_score[i])
            assert row.is_anomaly == bool(flagged[i])
            assert (row.series_id, row.model_version) == (series_id, 3)
            span = (row.start_ts, row.end_ts)
            assert span == ((None, None) if i >= 3 else tuple(spans[i].tolist()))
        # Held, not yet written, when the child's input ends: written as it exits.
        _, ids, _ = await scorer.score(
            (series_id, 3), model, windows[:2], n_samples=1, thresholds=np.zeros(2)
        )
        held.extend(ids)

    run(check, database_url=database_url, flush_seconds=3600)
    with sessions() as session:
        stored = set(session.scalars(select(ScoreRecord.id)))
    assert len(held) == 2 and set(held) <= stored and len(stored) == 7


def test_feedback_finds_a_score_the_child_still_holds(
    sessions: sessionmaker[Session], settings: Settings, make_headers: Callable[..., dict[str, str]]
) -> None:
    """Scores logged by the child wait there for the next flush; feedback on one of them has
    the child write them first, and the stored alarm is the one the client was told."""
    series_id, stream = trained_series(sessions, settings)
    windows = windows_of(stream, window_size=16, stride=8)[:4].tolist()
    unflushed = settings.model_copy(update={"score_process": True, "score_log_flush_seconds": 3600})
    with TestClient(create_app(unflushed)) as client:
        response = client.post(
            "/v1/score",
            json={"series_id": series_id, "windows": windows},
            headers=make_headers("score"),
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        with sessions() as session:
            assert session.scalars(select(ScoreRecord)).first() is None
        label = client.post(
            "/v1/labels",
            json={"score_id": results[1]["score_id"], "label": "false_positive"},
            headers=make_headers("label"),
        )
        assert label.status_code == 201, label.text
        with sessions() as session:
            stored = {str(r.id): r.is_anomaly for r in session.scalars(select(ScoreRecord))}
    assert stored == {r["score_id"]: r["is_anomaly"] for r in results}
