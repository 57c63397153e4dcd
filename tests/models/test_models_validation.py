"""Bad input raises typed errors whose messages say what is wrong."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from models import (
    BUILTIN_CLASSES,
    ClassSpec,
    InvalidInput,
    ModelError,
    NotEnoughData,
    TrainConfig,
    TrainedModel,
    TrainingCancelled,
    TrainingData,
    UnknownClass,
    UnsupportedOperation,
    fit,
)
from tests.models.models_testkit import CHANNELS, T, quick, sine_windows, tiny_config


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def test_every_error_is_a_model_error() -> None:
    for error in (
        InvalidInput,
        UnknownClass,
        NotEnoughData,
        TrainingCancelled,
        UnsupportedOperation,
    ):
        assert issubclass(error, ModelError)


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        (np.zeros((3, 10, 3)), f"windows must have shape (N, {T}, 3); got (3, 10, 3)"),
        (np.zeros((3, T, 4)), f"windows must have shape (N, {T}, 3); got (3, {T}, 4)"),
        (np.zeros((T, 3)), f"windows must have shape (N, {T}, 3); got ({T}, 3)"),
        (np.zeros((0, T, 3)), "windows is empty; need at least one window"),
        (np.full((2, T, 3), "x"), f"windows must be numeric with shape (N, {T}, 3); got dtype <U1"),
    ],
)
def test_score_rejects_bad_windows(
    trained_ss: TrainedModel, windows: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidInput, match=exact(message)):
        trained_ss.score(windows)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_score_rejects_non_finite_values(trained_ss: TrainedModel, bad: float) -> None:
    x = sine_windows(4)
    x[2, 5, 1] = bad
    with pytest.raises(InvalidInput, match=exact("windows contain NaN or inf at window 2")):
        trained_ss.score(x)
    with pytest.raises(InvalidInput, match="at window 2"):
        trained_ss.predict_proba(x)


def test_score_rejects_ragged_lists_and_bad_settings(trained_ss: TrainedModel) -> None:
    with pytest.raises(InvalidInput, match="windows must be an array"):
        trained_ss.score([[[1.0, 2.0, 3.0]], [[1.0]]])  # type: ignore[arg-type]
    x = sine_windows(2)
    with pytest.raises(InvalidInput, match="n_samples must be a positive int; got 0"):
        trained_ss.score(x, n_samples=0)
    with pytest.raises(InvalidInput, match=r"threshold quantile must be in \[0, 1\]; got 1.5"):
        trained_ss.score(x, threshold_quantile=1.5)
    with pytest.raises(InvalidInput, match="threshold quantile"):
        trained_ss.threshold(-0.1)
    assert trained_ss.score(x.tolist()).raw_score.shape == (2,)  # nested lists are fine


def fit_small(windows: np.ndarray, labels: np.ndarray | None = None, **kwargs: object) -> None:
    fit(
        TrainingData(windows, labels),
        classes=kwargs.pop("classes", BUILTIN_CLASSES),  # type: ignore[arg-type]
        channels=kwargs.pop("channels", CHANNELS),  # type: ignore[arg-type]
        model_config=kwargs.pop("model_config", tiny_config()),  # type: ignore[arg-type]
        train_config=quick(epochs=1),
        **kwargs,  # type: ignore[arg-type]
    )


def test_fit_rejects_bad_labels() -> None:
    x = sine_windows(8)
    labels = np.full((8, T), -1)
    labels[3, 2] = 7
    with pytest.raises(UnknownClass, match=exact("label index 7 is not a class (4 classes)")):
        fit_small(x, labels)
    labels[3, 2] = -2
    with pytest.raises(InvalidInput, match="label -2 at window 3, step 2 is not valid"):
        fit_small(x, labels)
    with pytest.raises(InvalidInput, match=rf"labels must have shape \(8, {T}\)"):
        fit_small(x, np.full((8, T - 1), -1))
    with pytest.raises(InvalidInput, match="labels must be integers"):
        fit_small(x, np.full((8, T), -1.0))


def test_fit_needs_enough_data() -> None:
    with pytest.raises(NotEnoughData, match=exact("need at least 4 windows to train; got 2")):
        fit_small(sine_windows(2))
    with pytest.raises(NotEnoughData, match="ES model learns from labels only"):
        fit_small(sine_windows(8), model_config=tiny_config(variant="es"))
    with pytest.raises(NotEnoughData, match="unlabelled or labelled normal"):
        fit_small(sine_windows(8), np.full((8, T), 1))  # every window is an anomaly


def test_fit_rejects_bad_classes_channels_and_settings() -> None:
    x = sine_windows(8)
    message = "got 2 channel names for windows with 3 channels"
    with pytest.raises(InvalidInput, match=exact(message)):
        fit_small(x, channels=("a", "b"))
    with pytest.raises(InvalidInput, match="class names must be unique; repeated: normal"):
        fit_small(x, classes=(ClassSpec("normal", "normal"), ClassSpec("normal", "anomaly")))
    with pytest.raises(InvalidInput, match="classes is empty"):
        fit_small(x, classes=())
    with pytest.raises(InvalidInput, match="kind must be 'normal' or 'anomaly'"):
        ClassSpec("broken", "weird")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="validation windows must have shape"):
        fit_small(x, validation=TrainingData(np.zeros((2, T + 1, 3))))
    for bad in (
        TrainConfig(batch_size=2),
        TrainConfig(lr=0.0),
        TrainConfig(val_fraction=1.0),
        TrainConfig(threshold_quantile=2.0),
        TrainConfig(epochs=0),
    ):
        with pytest.raises(InvalidInput):
            bad.validate()


def test_evaluate_reports_the_objective(trained_ss: TrainedModel) -> None:
    x = sine_windows(12, seed=7)
    unlabelled = trained_ss.evaluate(TrainingData(x))
    assert math.isfinite(unlabelled["loss"]) and math.isfinite(unlabelled["nll"])
    assert math.isnan(unlabelled["ce"]) and math.isnan(unlabelled["accuracy"])
    assert unlabelled["loss"] == pytest.approx(unlabelled["nll"] + unlabelled["kl"])
    labels = np.zeros((12, T), dtype=np.int64)
    labelled = trained_ss.evaluate(TrainingData(x, labels))
    assert 0.0 <= labelled["accuracy"] <= 1.0
    alpha = trained_ss.train_config.alpha  # class 0 is one of the series' own classes
    assert labelled["loss"] == pytest.approx(
        labelled["nll"] + labelled["kl"] + alpha * labelled["ce"]
    )
    assert labelled["n_labelled_windows"] == 12
    assert trained_ss.evaluate(TrainingData(x), n_samples=3)["nll"] > 0
    with pytest.raises(UnknownClass):
        trained_ss.evaluate(TrainingData(x, np.full((12, T), 9)))


def test_evaluate_nll_is_in_raw_units(trained_ss: TrainedModel) -> None:
    """Scaling data and normalisation together leaves the network's view unchanged; the raw-unit
    NLL then moves by exactly T * F * log(c), so differently normalised models compare fairly."""
    import copy

    from models.data import Normalisation

    c = 10.0
    x = sine_windows(12, seed=7)
    scaled = copy.copy(trained_ss)
    norm = trained_ss.normalisation
    scaled.normalisation = Normalisation(mean=norm.mean * c, std=norm.std * c)
    base = trained_ss.evaluate(TrainingData(x))
    moved = scaled.evaluate(TrainingData(x * c))
    assert moved["kl"] == pytest.approx(base["kl"], rel=1e-4)
    assert moved["nll"] - base["nll"] == pytest.approx(T * 3 * math.log(c), rel=1e-3)
