"""Fixtures for the models package tests: tiny networks on synthetic sine windows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from models import BUILTIN_CLASSES, TrainedModel, TrainingData, fit
from tests.models.models_testkit import CHANNELS, T, inject_faults, quick, sine_windows, tiny_config


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def trained_ss() -> TrainedModel:
    """A tiny recurrent SS model; labels only for 'normal' and 'anomaly' (no feedback labels)."""
    x = sine_windows(64, seed=0)
    x[:8] = inject_faults(x[:8])
    labels = np.full((64, T), -1, dtype=np.int64)
    labels[:8] = 1  # anomaly
    labels[8:16] = 0  # normal
    return fit(
        TrainingData(x, labels),
        classes=BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=tiny_config(),
        train_config=quick(epochs=3),
    )
