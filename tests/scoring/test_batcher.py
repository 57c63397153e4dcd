"""The micro-batcher: concurrent requests share model calls; failures reach every caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import ScoreRecord
from app.scoring.batcher import MicroBatcher
from app.scoring.log import Record, Scored, ScoreLog
from models import BUILTIN_CLASSES, InvalidInput, TrainConfig, TrainedModel, TrainingData, fit
from tests.utils.stream import create_series, make_stream, windows_of


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    windows = windows_of(make_stream(300), window_size=16, stride=8)
    return fit(
        TrainingData(windows),
        classes=BUILTIN_CLASSES,
        channels=["c0", "c1", "c2"],
        train_config=TrainConfig(epochs=2, batch_size=16),
    )


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return windows_of(make_stream(300, seed=1), window_size=16, stride=8)


def test_concurrent_requests_share_one_model_call(model: TrainedModel, windows: np.ndarray) -> None:
    async def run() -> tuple[list[float], int]:
        batcher = MicroBatcher(max_batch_size=256, max_wait=0.05, n_samples=1)
        results = await asyncio.gather(
            *(batcher.score((1, 1), model, windows[i : i + 1]) for i in range(16))
        )
        await batcher.close()
        return [float(r.batch.raw_score[0]) for r in results], batcher.model_calls

    raw, calls = asyncio.run(run())
    assert calls == 1
    # Every caller gets its own window's result, the same as scoring them together directly.
    direct = model.score(windows[:16]).raw_score
    assert raw == pytest.approx(direct.tolist(), rel=1e-5)


def test_a_partial_batch_is_released_after_max_wait(
    model: TrainedModel, windows: np.ndarray
) -> None:
    async def run() -> tuple[float, int]:
        batcher = MicroBatcher(max_batch_size=256, max_wait=0.05, n_samples=1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.score((1, 1), model, windows[:2])
        elapsed = loop.time() - started
        await batcher.close()
        return elapsed, batcher.model_calls

    elapsed, calls = asyncio.run(run())
    assert calls == 1
    assert 0.04 <= elapsed < 2.0


def test_a_full_batch_does_not_wait(model: TrainedModel, windows: np.ndarray) -> None:
    async def run() -> float:
        batcher = MicroBatcher(max_batch_size=4, max_wait=5.0, n_samples=1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.score((1, 1), model, windows[:4])
        await batcher.close()
        return loop.time() - started

    assert asyncio.run(run()) < 2.0


def test_batches_never_exceed_max_batch_size(model: TrainedModel, windows: np.ndarray) -> None:
    async def run() -> int:
        batcher = MicroBatcher(max_batch_size=4, max_wait=0.05, n_samples=1)
        await asyncio.gather(*(batcher.score((1, 1), model, windows[i : i + 1]) for i in range(10)))
        await batcher.close()
        return batcher.model_calls

    assert asyncio.run(run()) == 3  # 4 + 4 + 2


def test_a_failed_model_call_fails_every_caller(model: TrainedModel, windows: np.ndarray) -> None:
    bad = windows[:1, :, :2]  # wrong channel count: the model itself refuses it

    async def run() -> list[BaseException | object]:
        batcher = MicroBatcher(max_batch_size=256, max_wait=0.05, n_samples=1)
        results = await asyncio.gather(
            *(batcher.score((1, 1), model, bad) for _ in range(3)), return_exceptions=True
        )
        # The batcher keeps serving after a failure.
        ok = await batcher.score((1, 1), model, windows[:1])
        await batcher.close()
        return [*results, ok]

    *failures, ok = asyncio.run(run())
    assert len(failures) == 3
    assert all(isinstance(f, InvalidInput) for f in failures)
    assert not isinstance(ok, BaseException)


def test_different_models_are_not_mixed(model: TrainedModel, windows: np.ndarray) -> None:
    other = fit(
        TrainingData(windows * 2.0),
        classes=BUILTIN_CLASSES,
        channels=["c0", "c1", "c2"],
        train_config=TrainConfig(epochs=1, batch_size=16, seed=3),
    )

    async def run() -> tuple[float, float, int]:
        batcher = MicroBatcher(max_batch_size=256, max_wait=0.05, n_samples=1)
        a, b = await asyncio.gather(
            batcher.score((1, 1), model, windows[:1]), batcher.score((2, 1), other, windows[:1])
        )
        await batcher.close()
        return float(a.batch.raw_score[0]), float(b.batch.raw_score[0]), batcher.model_calls

    a, b, calls = asyncio.run(run())
    assert calls == 2
    assert a == pytest.approx(float(model.score(windows[:1]).raw_score[0]), rel=1e-5)
    assert b == pytest.approx(float(other.score(windows[:1]).raw_score[0]), rel=1e-5)


def test_logged_requests_are_logged_apart_from_the_others(
    model: TrainedModel, windows: np.ndarray, sessions: sessionmaker[Session]
) -> None:
    """On the scoring thread: each logged request's windows go into the log with its own
    threshold and spans, and come back with their ids; a request without a record is scored
    in a batch of its own and logged nowhere."""
    series_id = create_series(sessions, name="batched")
    score_log = ScoreLog(sessions)
    direct = model.score(windows[:4]).adjusted_score
    threshold = float(np.median(direct[:2]))

    async def run() -> tuple[Scored, Scored, Scored]:
        batcher = MicroBatcher(max_batch_size=256, max_wait=0.05, n_samples=1, score_log=score_log)
        key = (series_id, 1)
        results = await asyncio.gather(
            batcher.score(key, model, windows[:2], Record(threshold, [(0, 15), (8, 23)])),
            batcher.score(key, model, windows[2:3], Record(-np.inf)),
            batcher.score(key, model, windows[3:4]),
        )
        await batcher.close()
        assert batcher.model_calls == 2
        return results

    first, second, unlogged = asyncio.run(run())
    assert first.flagged == (direct[:2] > threshold).tolist() and sum(first.flagged) == 1
    assert second.flagged == [True]
    assert unlogged.ids == [] and unlogged.flagged == []
    assert score_log.flush() == 3
    with sessions() as session:
        rows = {r.id: r for r in session.scalars(select(ScoreRecord))}
    assert set(rows) == {*first.ids, *second.ids}
    got = [(rows[i].start_ts, rows[i].end_ts, rows[i].is_anomaly) for i in first.ids + second.ids]
    assert got == [(0, 15, first.flagged[0]), (8, 23, first.flagged[1]), (None, None, True)]


def test_a_small_request_runs_between_the_pieces_of_a_big_one(
    model: TrainedModel, windows: np.ndarray
) -> None:
    """A request over `max_piece_steps` is scored a piece at a time: a request for another
    series that arrives while its first piece runs is answered before the big one is."""
    steps = windows.shape[1]

    async def run() -> tuple[list[str], Scored, int]:
        batcher = MicroBatcher(
            max_batch_size=256, max_wait=0.0, n_samples=1, max_piece_steps=2 * steps
        )
        finished: list[str] = []

        async def big() -> Scored:
            scored = await batcher.score((1, 1), model, windows)
            finished.append("big")
            return scored

        async def small() -> None:
            while batcher.model_calls < 1:  # the big request's first piece is being scored
                await asyncio.sleep(0)
            await batcher.score((2, 1), model, windows[:1])
            finished.append("small")

        scored, _ = await asyncio.gather(big(), small())
        await batcher.close()
        return finished, scored, batcher.model_calls

    finished, scored, calls = asyncio.run(run())
    assert len(windows) >= 8
    assert finished == ["small", "big"]
    assert calls == -(-len(windows) // 2) + 1  # the big one's pieces, and the small one
    # The pieces, put together, are the whole request's result.
    direct = model.score(windows)
    assert scored.batch.raw_score.tolist() == pytest.approx(direct.raw_score.tolist(), rel=1e-5)
    assert scored.batch.step_contributions.shape == direct.step_contributions.shape
    assert scored.ids == [] and scored.flagged == []
