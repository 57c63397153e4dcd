"""The training budget in optimiser steps, the batch that scales with the data, the split that
keeps every label in training, and the threshold that a few unlabelled faults cannot lift."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

import models.train as train_module
from models import (
    BUILTIN_CLASSES,
    FALSE_POSITIVE,
    ClassSpec,
    SemiSupervisedVAE,
    TrainConfig,
    TrainingData,
    fit,
)
from models.scoring import calibrate, fit_calibration, threshold_at
from models.train import split_indices, window_class
from tests.models.models_testkit import CHANNELS, T, sine_windows, tiny_config


@pytest.fixture
def validation_never_improves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The validation loss gets worse at every check, so only the floor keeps a fit going."""
    losses = iter(range(1000))
    real = train_module.dataset_objective  # type: ignore[attr-defined]

    def worsening(net: SemiSupervisedVAE, *args: Any, **kwargs: Any) -> dict[str, float]:
        stats = real(net, *args, **kwargs)
        stats["loss"] = float(next(losses))
        return stats

    monkeypatch.setattr(train_module, "dataset_objective", worsening)


def test_the_automatic_budget_has_a_floor_and_a_ceiling() -> None:
    auto = TrainConfig(min_steps=600, max_steps=3000)
    assert auto.budget(batches_per_epoch=1) == 600  # 32 windows: 30 passes would be 30 steps
    assert auto.budget(batches_per_epoch=50) == 1500  # 30 passes
    assert auto.budget(batches_per_epoch=1000) == 3000
    assert TrainConfig(steps=77).budget(batches_per_epoch=1000) == 77
    assert TrainConfig(epochs=3).budget(batches_per_epoch=5) == 15
    assert TrainConfig(epochs=3).early_stop_floor(15) == 0
    assert auto.early_stop_floor(1500) == 600


def test_labels_that_teach_the_class_head_raise_the_floor_up_to_the_ceiling() -> None:
    auto = TrainConfig(min_steps=600, class_min_steps=1500, max_steps=3000)
    assert auto.budget(batches_per_epoch=1, classifying=True) == 1500
    assert auto.early_stop_floor(1500, classifying=True) == 1500
    assert auto.budget(batches_per_epoch=80, classifying=True) == 2400  # 30 passes
    low_ceiling = TrainConfig(min_steps=16, class_min_steps=1500, max_steps=40)
    assert low_ceiling.budget(batches_per_epoch=1, classifying=True) == 40
    assert TrainConfig(steps=77).budget(batches_per_epoch=1, classifying=True) == 77


@pytest.mark.parametrize(
    ("label", "floor"), [("regime_b", 50), (FALSE_POSITIVE, 20), ("anomaly", 20), (None, 20)]
)
@pytest.mark.usefixtures("validation_never_improves")
def test_only_labels_of_normal_kind_classes_earn_the_class_floor(
    label: str | None, floor: int
) -> None:
    """Validation never improves after the first check, so each fit stops at its floor: the
    class floor for a regime label, the plain one for feedback, anomaly kinds or no label."""
    classes = (*BUILTIN_CLASSES, ClassSpec("regime_b", "normal"))
    names = [c.name for c in classes]
    labels = None
    if label is not None:
        labels = np.full((24, T), -1, dtype=np.int64)
        labels[:6] = names.index(label)
    model = fit(
        TrainingData(sine_windows(24, seed=1), labels),
        classes=classes,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=TrainConfig(
            min_steps=20, class_min_steps=50, max_steps=200, eval_every=10, patience=1,
            calibration_samples=2, members=1,
        ),
    )  # fmt: skip
    assert model.metrics["step_floor"] == floor
    assert model.metrics["steps_run"] == floor
    assert model.metrics["stopped"] == "early"


@pytest.mark.parametrize(("n", "batch"), [(12, 16), (40, 16), (300, 32), (600, 64), (50_000, 64)])
def test_the_batch_scales_with_the_data(n: int, batch: int) -> None:
    assert TrainConfig().batch_for(n) == batch
    assert TrainConfig(batch_size=16).batch_for(n) == 16


@pytest.mark.usefixtures("validation_never_improves")
def test_a_small_data_set_trains_for_the_whole_floor_before_early_stopping() -> None:
    """12 windows are one batch a pass. Validation never improves after the first check, yet
    training runs until the floor: early stopping may not end it after a handful of steps."""
    model = fit(
        TrainingData(sine_windows(15, seed=0)),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=TrainConfig(
            min_steps=60, max_steps=200, eval_every=10, patience=2, calibration_samples=2
        ),
    )
    assert model.metrics["batch_size"] == 16
    assert model.metrics["step_budget"] == 60  # 30 passes of 1 batch, floored at 60
    assert model.metrics["steps_run"] == 60
    assert model.metrics["best_step"] == 10

    longer = fit(
        TrainingData(sine_windows(15, seed=0)),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=TrainConfig(
            min_steps=30, max_steps=200, steps=200, eval_every=10, patience=2,
            calibration_samples=2,
        ),
    )  # fmt: skip
    assert longer.metrics["stopped"] == "early"
    assert longer.metrics["steps_run"] == 30  # the floor, then at once: patience ran out


def test_every_labelled_window_reaches_training() -> None:
    n = 50
    labels = np.full((n, T), -1, dtype=np.int64)
    labels[45:, :] = 2  # the newest five windows: false_positive feedback
    labels[10, :4] = 1  # one window partly labelled anomaly: its class's only example
    for by_time in (True, False):
        train, val = split_indices(labels, n, 0.2, np.random.default_rng(0), by_time=by_time)
        assert set(range(45, 50)) <= set(train.tolist())
        assert 10 in train
        unlabelled_val = [i for i in val if (labels[i] < 0).all()]
        assert len(unlabelled_val) == 9  # 20 % of the 44 unlabelled windows
        assert not set(unlabelled_val) & set(train.tolist())
        assert len([i for i in val if i >= 45]) == 1  # a copy of 20 % of the feedback class
        if by_time:
            assert unlabelled_val == list(range(36, 45))  # the newest unlabelled ones


def test_window_class_is_the_majority_label() -> None:
    labels = np.array([[-1, -1, -1], [0, 1, 1], [2, -1, -1]])
    assert window_class(labels).tolist() == [-1, 1, 2]


def test_a_few_unlabelled_faults_do_not_lift_the_threshold() -> None:
    rng = np.random.default_rng(0)
    train_raw = rng.normal(100, 5, 500)
    clean = rng.normal(101, 5, 60)
    faults = rng.normal(2000, 300, 12)  # a fifth of the held-out windows
    cal_clean = fit_calibration(train_raw, clean, n_samples=1, source="validation")
    cal = fit_calibration(
        train_raw, np.concatenate([clean, faults]), n_samples=1, source="validation"
    )
    assert cal.n_outliers == 12
    assert threshold_at(cal, 0.99) == pytest.approx(threshold_at(cal_clean, 0.99))
    assert cal_clean.n_outliers == 0


def test_the_threshold_is_taken_on_the_scores_as_served() -> None:
    """Held-out windows that operators' feedback quietens count at their adjusted score."""
    rng = np.random.default_rng(1)
    train_raw = rng.normal(100, 5, 500)
    normal_raw = np.concatenate([rng.normal(101, 5, 40), rng.normal(140, 5, 10)])
    p_fp = np.concatenate([np.zeros(40), np.full(10, 0.9)])
    plain = fit_calibration(train_raw, normal_raw, n_samples=1, source="validation")
    served = fit_calibration(
        train_raw, normal_raw, n_samples=1, source="validation", p_false_positive=p_fp
    )
    assert threshold_at(served, 0.95) < threshold_at(plain, 0.95)
    top = calibrate(normal_raw[:40], served.center, served.scale).max()
    assert threshold_at(served, 1.0) == pytest.approx(top)


def test_an_ensemble_averages_its_members_and_survives_the_artifact() -> None:
    from models import Progress, TrainedModel
    from models.scoring import infer
    from models.trained import make_generator

    reports: list[Progress] = []
    model = fit(
        TrainingData(sine_windows(40, seed=0)),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=TrainConfig(epochs=2, batch_size=16, members=3, calibration_samples=2),
        progress=reports.append,
    )
    assert len(model.nets) == 3 and model.metrics["members"] == 3
    assert [p.step for p in reports] == sorted(p.step for p in reports)
    assert reports[-1].step == reports[-1].steps
    x = sine_windows(5, seed=7)
    batch = model.score(x, seed=3)
    standardised = model.normalisation.apply(x)
    each = [
        infer(net, standardised, n_samples=1, generator=make_generator(3)).raw_score
        for net in model.nets
    ]
    assert not np.allclose(each[0], each[1])  # members differ: different seeds
    assert np.allclose(batch.raw_score, np.mean(each, axis=0))
    assert np.allclose(batch.channel_contributions.sum(axis=1), batch.raw_score)
    again = TrainedModel.from_bytes(model.to_bytes())
    assert len(again.nets) == 3
    assert np.array_equal(again.score(x, seed=3).raw_score, batch.raw_score)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_flat_window_is_not_the_most_normal_one(seed: int) -> None:
    """The low-complexity trap: a likelihood model trained on oscillating channels finds a
    flat-lined window (a stuck sensor, a machine at rest) more probable than its own training
    data. The complexity correction takes that reward for simplicity back. The trap is the
    preprint's decoder's (z and pi only); the autoregressive one is tested below."""
    data = TrainingData(sine_windows(64, seed=seed))
    normal = sine_windows(20, seed=seed + 50)
    level = data.windows.mean(axis=(0, 1))  # (F,) each channel's mean
    jitter = np.random.default_rng(seed).normal(scale=0.01, size=(20, T, 3))
    flat = (level + jitter).astype(np.float32)  # stuck near the mean: a machine at rest
    scores = {}
    for corrected in (False, True):
        config = dataclasses.replace(
            tiny_config(), complexity_correction=corrected, autoregressive=False
        )
        model = fit(
            data,
            classes=BUILTIN_CLASSES,
            channels=CHANNELS,
            model_config=config,
            train_config=TrainConfig(steps=150, batch_size=16, seed=seed, members=1),
        )
        scores[corrected] = (model.score(normal).score, model.score(flat).score)
    plain_normal, plain_flat = scores[False]
    normal_scores, flat_scores = scores[True]
    assert np.median(plain_flat) < np.median(plain_normal)  # the trap, uncorrected
    assert flat_scores.min() > normal_scores.max()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_autoregressive_decoder_sees_a_change_of_frequency(seed: int) -> None:
    """A per-step latent can carry any smooth shape, so the preprint's decoder reconstructs an
    oscillation at twice its usual speed about as well as the usual one (issue 13: the plant's
    frequency changes at ROC-AUC 0.37). A decoder that also reads the previous step has learned
    how the signal moves from one step to the next, and the faster one does not move that way."""
    data = TrainingData(sine_windows(64, seed=seed))
    normal = sine_windows(20, seed=seed + 50)
    faster = sine_windows(20, seed=seed + 60, period=4.0)
    model = fit(
        data,
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=TrainConfig(steps=150, batch_size=16, seed=seed, members=1),
    )
    assert model.config.autoregressive
    normal_scores, faster_scores = model.score(normal).score, model.score(faster).score
    assert np.median(faster_scores) > 3 * np.median(normal_scores)
    assert np.mean(faster_scores > np.quantile(normal_scores, 0.9)) >= 0.9
