"""Data-quality checks: stuck channels, values out of the training range, dropouts."""

from __future__ import annotations

from models import BUILTIN_CLASSES, TrainedModel, TrainingData, fit
from models.quality import DROPOUT, OUT_OF_RANGE, STUCK, DataProfile, describe
from tests.models.models_testkit import CHANNELS, T, quick, sine_windows, tiny_config


def test_each_check_fires_on_its_fault_and_only_there() -> None:
    train = sine_windows(64, seed=0)
    profile = DataProfile.fit(train)
    normal = sine_windows(10, seed=1)
    assert not profile.check(normal).any()
    faulty = normal.copy()
    faulty[0, :, 1] = faulty[0, 0, 1]  # channel b frozen
    faulty[1, 5, 2] = 50.0  # channel c far beyond its range
    faulty[2, 4 : 4 + T // 4, 0] = 0.0  # channel a drops to zero for a quarter window
    codes = profile.check(faulty)
    assert codes[0].tolist() == [0, STUCK, 0]
    assert codes[1].tolist() == [0, 0, OUT_OF_RANGE]
    assert codes[2][0] & DROPOUT
    assert not codes[3:].any()
    assert describe(codes[:2], CHANNELS) == [
        [{"check": "stuck", "channel": "b"}],
        [{"check": "out_of_range", "channel": "c"}],
    ]


def test_channels_that_stand_still_or_read_zero_in_training_are_not_flagged() -> None:
    train = sine_windows(64, seed=0)
    train[:, :, 1] = 3.0  # a set-point: never moves
    train[::2, :, 2] = 0.0  # a valve: often exactly zero
    profile = DataProfile.fit(train)
    test = sine_windows(4, seed=5)
    test[:, :, 1] = 3.0
    test[:, :, 2] = 0.0
    codes = profile.check(test)
    assert not (codes[:, 1] & STUCK).any()
    assert not (codes[:, 2] & DROPOUT).any()


def test_a_failed_check_raises_an_alarm_and_survives_the_artifact() -> None:
    model = fit(
        TrainingData(sine_windows(48, seed=0)),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=1),
    )
    windows = sine_windows(3, seed=2)
    windows[1, :, 0] = windows[1, 0, 0]
    again = TrainedModel.from_bytes(model.to_bytes())
    for m in (model, again):
        batch = m.score(windows)
        assert batch.quality[1, 0] == STUCK
        assert batch.is_anomaly[1]
