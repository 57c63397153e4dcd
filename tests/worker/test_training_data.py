"""What a training job learns from: the split rule, and labels that always reach training."""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Label, ScoreRecord, Series
from app.training.pipeline import build_dataset
from tests.utils.stream import STEP_US, T0_US, create_series, insert_points, make_stream


def _label(
    sessions: sessionmaker[Session], series_id: int, first: int, last: int, name: str
) -> None:
    with sessions() as session, session.begin():
        session.add(
            Label(
                series_id=series_id,
                start_ts=T0_US + first * STEP_US,
                end_ts=T0_US + last * STEP_US,
                label=name,
            )
        )


def _dataset(sessions: sessionmaker[Session], series_id: int, settings: Settings, seed: int = 0):  # type: ignore[no-untyped-def]
    with sessions() as session:
        series = session.get(Series, series_id)
        assert series is not None
        return build_dataset(
            session=session, series=series, settings=settings, previous=(), seed=seed
        )


def test_feedback_on_the_newest_windows_trains_the_next_version(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A stream (overlapping windows) holds out its newest windows; the alarms an operator has
    just reviewed lie there, and their labels must still reach training."""
    series_id = create_series(sessions, window_size=16, stride=8)
    insert_points(sessions, series_id, make_stream(800))
    _label(sessions, series_id, 760, 790, "false_positive")
    dataset = _dataset(sessions, series_id, settings)
    windows = (800 - 16) // 8 + 1
    assert dataset.summary["validation_windows"] >= round(0.2 * windows) - 1
    assert dataset.summary["labelled_windows"] >= 4  # the windows inside 760-790 and beside
    assert dataset.train.labels is not None
    fp = [c.name for c in dataset.classes].index("false_positive")
    assert (dataset.train.labels == fp).any(axis=1).sum() == dataset.summary["labelled_windows"]
    # Held-out unlabelled windows are the newest ones: none shares points with training.
    val = dataset.validation.windows
    train_unlabelled = dataset.train.windows[(dataset.train.labels < 0).all(axis=1)]
    first_val = val[0]
    assert not any(np.array_equal(first_val, w) for w in train_unlabelled)


def test_separate_examples_are_held_out_at_random_by_class(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Windows that do not overlap (stride = window) are separate examples: the split is random
    and stratified, so the newest class is not the only one held out."""
    series_id = create_series(sessions, window_size=10, stride=10)
    insert_points(sessions, series_id, make_stream(400))  # 40 windows
    _label(sessions, series_id, 300, 399, "anomaly")  # the newest 10 windows: one class
    splits = [_dataset(sessions, series_id, settings, seed=seed) for seed in (0, 1)]
    for dataset in splits:
        assert dataset.summary["labelled_windows"] == 10  # all of them train
        assert dataset.validation.labels is not None
        held_labels = (dataset.validation.labels >= 0).any(axis=1)
        assert held_labels.sum() == 2  # copies of 20 % of the class
        assert (~held_labels).sum() == 6  # 20 % of the 30 unlabelled windows
    first, second = (d.validation.windows for d in splits)
    assert not np.array_equal(first, second)  # at random, by the job's seed


def test_posted_feedback_windows_train_in_the_order_they_were_labelled(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Windows marked by score_id join training in label order, not in the score log's
    (random UUID) id order, which made two runs of one job train differently ordered batches."""
    series_id = create_series(sessions, window_size=16, stride=8)
    insert_points(sessions, series_id, make_stream(400))
    marks = range(6)
    with sessions() as session, session.begin():
        for k in marks:
            score_id = uuid.UUID(int=1_000 - k)  # id order is the reverse of label order
            window = np.full((16, 3), float(k), dtype="<f4")
            session.add(
                ScoreRecord(
                    id=score_id, series_id=series_id, model_version=1, window=window.tobytes(),
                    raw_score=1.0, adjusted_score=1.0, is_anomaly=True,
                )
            )  # fmt: skip
            session.flush()
            session.add(Label(series_id=series_id, label="false_positive", score_id=score_id))
            session.flush()
    dataset = _dataset(sessions, series_id, settings)
    posted = dataset.train.windows[-len(marks) :]
    assert [float(w[0, 0]) for w in posted] == [float(k) for k in marks]
    assert dataset.train.labels is not None
    fp = [c.name for c in dataset.classes].index("false_positive")
    assert (dataset.train.labels[-len(marks) :] == fp).all()
