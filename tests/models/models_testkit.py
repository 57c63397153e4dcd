"""Shared helpers for the models package tests (synthetic data, tiny configs, AUC)."""

from __future__ import annotations

import numpy as np

from models import ModelConfig, TrainConfig

T, F = 16, 3  # window length and channel count used throughout
CHANNELS = ("a", "b", "c")


def sine_windows(
    n: int, *, seed: int = 0, period: float = 8.0, noise: float = 0.1, window: int = T
) -> np.ndarray:
    """(n, window, F) float32: per channel a sine of the given period with a random phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(window)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, F))
    x = np.sin(2 * np.pi * t / period + phase) + noise * rng.normal(size=(n, window, F))
    return (5.0 + 2.0 * x).astype(np.float32)  # not standardised: the model must do that


def inject_faults(x: np.ndarray, *, seed: int = 1) -> np.ndarray:
    """A spike on one channel or an offset over half the window, per window."""
    rng = np.random.default_rng(seed)
    out = x.copy()
    for i in range(out.shape[0]):
        c = int(rng.integers(0, out.shape[2]))
        if i % 2 == 0:
            s = int(rng.integers(0, out.shape[1] - 3))
            out[i, s : s + 3, c] += 8.0
        else:
            out[i, out.shape[1] // 2 :, c] += 4.0
    return out


def tiny_config(flavour: str = "recurrent", variant: str = "ss") -> ModelConfig:
    return ModelConfig(
        flavour=flavour,  # type: ignore[arg-type]
        variant=variant,  # type: ignore[arg-type]
        rnn_dense=8,
        rnn_hidden=8,
        rnn_top=8,
        dense_hidden=(32, 16),
        conv_channels=(8, 8),
        conv_strides=(1, 2),
        conv_hidden=16,
    )


def quick(**overrides: object) -> TrainConfig:
    """A TrainConfig for tests: few epochs, small calibration L."""
    values: dict[str, object] = {
        "epochs": 2,
        "batch_size": 16,
        "calibration_samples": 4,
        "members": 1,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counting one half."""
    diff = positives[:, None] - negatives[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())
