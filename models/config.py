"""Configuration and plain data types shared by the whole package.

``ModelConfig`` describes the network (the preprint's appendix A tables are the defaults),
``TrainConfig`` the optimisation (§2.2-2.3 and appendix A), ``ClassSpec`` the label classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from models.errors import InvalidInput

Flavour = Literal["recurrent", "dense", "conv"]
Variant = Literal["ss", "eu", "es"]
Kind = Literal["normal", "anomaly"]

FALSE_POSITIVE = "false_positive"
FALSE_NEGATIVE = "false_negative"

AUTO_EPOCHS = 30  # passes over the training windows that the automatic step budget aims for


@dataclass(frozen=True)
class ClassSpec:
    """One label class. ``kind`` decides whether its windows may feed the ELBO (METHOD.md)."""

    name: str
    kind: Kind

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput(f"class name must be a non-empty string; got {self.name!r}")
        if self.kind not in get_args(Kind):
            raise InvalidInput(
                f"class {self.name!r} has kind {self.kind!r}; kind must be 'normal' or 'anomaly'"
            )


BUILTIN_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("normal", "normal"),
    ClassSpec("anomaly", "anomaly"),
    ClassSpec(FALSE_POSITIVE, "normal"),  # an alarm that was wrong: the window is normal
    ClassSpec(FALSE_NEGATIVE, "anomaly"),  # a fault that was missed: the window is anomalous
)


@dataclass
class ModelConfig:
    """Architecture. Every size is configuration; the preprint's tables are the defaults."""

    flavour: Flavour = "recurrent"  # Table 15 is the preprint's model for sensor windows
    variant: Variant = "ss"  # ss: semi-supervised VAE; eu: no pi; es: encoder + pi, CE only
    latent_dim: int = 2  # Tables 13 and 15: a 2-d Gaussian latent (per time step if recurrent)
    autoregressive: bool = True  # recurrent: the decoder also reads the previous step (model.py)
    min_sigma: float = 1e-3  # added to softplus(sigma_x): keeps the Gaussian NLL finite
    complexity_correction: bool = True  # score = NLL - the window's own code length (scoring.py)
    complexity_floor: float = 1e-2  # smallest per-window spread (standardised) the code may use
    # recurrent flavour, Table 15 (the decoder mirrors the encoder)
    rnn_dense: int = 40  # per-step dense (relu) before the encoder LSTM / after the decoder LSTM
    rnn_hidden: int = 40  # LSTM width, encoder and decoder
    rnn_top: int = 30  # per-step dense (relu) on top of the encoder LSTM / the decoder's input
    # dense flavour, Table 13: the window is flattened to T*F inputs; decoder mirrored
    dense_hidden: tuple[int, ...] = (1024, 1024)
    # conv flavour, Table 14 turned 1-D: convolutions along time with channels as features
    conv_channels: tuple[int, ...] = (64, 64, 64)  # one conv (+ batch norm + relu) per entry
    conv_strides: tuple[int, ...] = (1, 1, 2)  # Table 14: two stride-1 convs, then stride 2
    conv_kernel: int = 3  # Table 14: kernel 3 (odd, so 'same' padding is symmetric)
    conv_hidden: int = 512  # the fully connected layer after flattening
    dropout: float = 0.5  # Table 14's dropout after the fully connected layers (conv only)
    # data shape: filled in by fit() from the data, stored in the artifact
    window_size: int | None = None  # T, time steps per window
    n_channels: int | None = None  # F, sensor channels
    n_classes: int | None = None  # K, label classes (including the feedback classes)

    def validate(self) -> None:
        """Raise InvalidInput naming the first setting that cannot build a network."""
        if self.flavour not in get_args(Flavour):
            raise InvalidInput(f"flavour must be one of {get_args(Flavour)}; got {self.flavour!r}")
        if self.variant not in get_args(Variant):
            raise InvalidInput(f"variant must be one of {get_args(Variant)}; got {self.variant!r}")
        for name in ("latent_dim", "rnn_dense", "rnn_hidden", "rnn_top", "conv_hidden"):
            _positive_int(name, getattr(self, name))
        for name in ("dense_hidden", "conv_channels", "conv_strides"):
            sizes = getattr(self, name)
            if not isinstance(sizes, tuple) or not sizes:
                raise InvalidInput(f"{name} must be a non-empty tuple of ints; got {sizes!r}")
            for size in sizes:
                _positive_int(name, size)
        if len(self.conv_channels) != len(self.conv_strides):
            raise InvalidInput(
                f"conv_channels and conv_strides must have the same length; got "
                f"{len(self.conv_channels)} and {len(self.conv_strides)}"
            )
        _positive_int("conv_kernel", self.conv_kernel)
        if self.conv_kernel % 2 != 1:
            raise InvalidInput(f"conv_kernel must be odd; got {self.conv_kernel}")
        if not (0.0 <= self.dropout < 1.0):
            raise InvalidInput(f"dropout must be in [0, 1); got {self.dropout}")
        if not (self.min_sigma > 0.0 and math.isfinite(self.min_sigma)):
            raise InvalidInput(f"min_sigma must be positive; got {self.min_sigma}")
        if not (self.complexity_floor > 0.0 and math.isfinite(self.complexity_floor)):
            raise InvalidInput(f"complexity_floor must be positive; got {self.complexity_floor}")
        for name in ("window_size", "n_channels", "n_classes"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of to_dict (JSON turns tuples into lists). Unknown keys raise InvalidInput."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"unknown model config keys: {', '.join(unknown)}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        config = cls(**values)
        config.validate()
        return config


@dataclass
class TrainConfig:
    """Optimisation. Defaults follow the preprint's §2.2-2.3 and appendix A.3, except the budget.

    The budget is counted in optimiser steps, not epochs: with a few dozen windows an epoch is
    one or two steps, and an epoch budget with early stopping ends training before the model has
    learned anything (issue 13: jobs stopped after 6 steps classified at chance). Without an
    explicit `steps` or `epochs`, the budget is AUTO_EPOCHS passes over the training windows,
    clamped to [min_steps, max_steps], and early stopping never ends training before min_steps.

    alpha weighs the cross-entropy of the normal-kind classes (the regimes or activities a
    series' windows are sorted into) against the reconstruction. At the preprint's alpha = 1 the
    reconstruction of long windows sets what the shared encoder learns and the class head stays
    weak: GunPoint (150 steps) with every training sample labelled classified 0.67-0.68 at
    alpha = 1 against 0.80-0.93 at alpha = 10 (2 seeds, in-process). The classes that mark
    events, anomaly kinds and the feedback classes, keep event_alpha = 1, and so does the
    weight of the feedback classes' negatives (gamma, loss.py): at 10, a confirmed fault's
    class pulled the encoder its way and the dismissed benign episode came back with 0.92 of
    its peak score instead of under 0.5 (tests/detection/test_end_to_end.py, seed 11).

    class_min_steps: the class head learns more slowly than the reconstruction, against which
    it competes for the shared encoder, so when labels of normal-kind classes exist (regimes or
    activities to tell apart, not feedback or anomaly kinds) the floor is class_min_steps
    (still at most max_steps). GunPoint with every training sample labelled, 3 seeds
    in-process with the service's defaults: accuracy 0.79 ± 0.11 at 600 steps, 0.95 ± 0.03 at
    1,500. A data set whose validation loss stops improving early still keeps the weights of
    its best check, so the longer floor costs time there, not quality.
    """

    steps: int | None = None  # optimiser steps; None: automatic (see budget())
    epochs: int | None = None  # exact passes instead of steps (tests, reproductions); no floor
    min_steps: int = 600  # floor of the automatic budget, and of early stopping
    class_min_steps: int = 1500  # the floor instead when labels teach pi classes; see below
    max_steps: int = 3000  # ceiling of the automatic budget
    batch_size: int | None = None  # windows per batch; None: scaled to the data (batch_for())
    lr: float = 1e-3  # appendix A.3: 0.001 for the recurrent model
    momentum: float = 0.9  # RMSprop momentum, appendix A
    alpha: float = 10.0  # CE weight of the normal-kind classes; see below
    event_alpha: float = 1.0  # CE weight of anomaly kinds and the feedback classes; see below
    beta: float = 1.0  # KL weight (1 = the plain ELBO)
    val_fraction: float = 0.2  # used only when fit() gets no explicit validation set
    patience: int = 10  # validation checks without improvement before stopping (after min_steps)
    eval_every: int | None = None  # steps between validation checks; None: budget / 30, >= 10
    seed: int = 0  # seeds the split, the initialisation, batching and sampling
    members: int = 3  # ensemble: networks trained from different seeds, scores averaged
    threads: int | None = None  # torch.set_num_threads for the fit; None = leave as is
    threshold_quantile: float = 0.99  # alarm threshold: this quantile of held-out normal scores
    calibration_samples: int = 16  # L used when scoring windows for calibration
    score_samples: int | None = None  # L this model is served at; None: the caller's choice
    feedback_negative_weight: float = (
        1.0  # gamma: unlabelled windows are mostly not feedback (loss.py)
    )
    input_noise: float = 0.1  # sd of the noise the encoder reads in training (denoising, train.py)
    grad_clip: float | None = 100.0  # max global grad norm: the NLL spikes when sigma_x is small
    warm_start_normalisation: Literal["keep", "refit"] = "keep"  # keep: old weights stay valid

    def batch_for(self, n_windows: int) -> int:
        """The batch size: as given, or the power of two nearest n/8 within [16, 64], so that
        a small data set still gets several distinct batches per pass and a large one
        batches of 64 (the preprint's appendix A). Not below 16: labelled and unlabelled
        windows share a batch half and half, and 4 labelled windows a step left the class head
        under-trained (GunPoint with every sample labelled, 3 seeds in-process, 600 steps:
        accuracy 0.84 ± 0.04 at batch 16 against 0.68 ± 0.03 at batch 8)."""
        if self.batch_size is not None:
            return self.batch_size
        target = max(n_windows, 1) / 8.0
        return int(min(64, max(16, 2 ** round(math.log2(max(target, 1.0))))))

    def floor(self, *, classifying: bool = False) -> int:
        """The automatic budget's floor: min_steps, or class_min_steps when labels teach the
        class head normal-kind classes; never above max_steps."""
        floor = max(self.min_steps, self.class_min_steps) if classifying else self.min_steps
        return min(floor, self.max_steps)

    def budget(self, batches_per_epoch: int, *, classifying: bool = False) -> int:
        """Optimiser steps to run: `steps`, or `epochs` passes, or AUTO_EPOCHS passes clamped
        to [floor(), max_steps]."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * batches_per_epoch
        floor = self.floor(classifying=classifying)
        return int(min(self.max_steps, max(floor, AUTO_EPOCHS * batches_per_epoch)))

    def early_stop_floor(self, budget: int, *, classifying: bool = False) -> int:
        """Early stopping may end training only after this many steps."""
        if self.epochs is not None and self.steps is None:
            return 0  # an explicit epoch budget keeps the classic per-epoch early stopping
        return min(self.floor(classifying=classifying), budget)

    def validate(self) -> None:
        """Raise InvalidInput naming the first setting that cannot drive a training run."""
        for name in ("steps", "epochs", "batch_size", "eval_every"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        _positive_int("min_steps", self.min_steps)
        _positive_int("class_min_steps", self.class_min_steps)
        _positive_int("members", self.members)
        _positive_int("max_steps", self.max_steps)
        if self.max_steps < self.min_steps:
            raise InvalidInput(
                f"max_steps ({self.max_steps}) must not be below min_steps ({self.min_steps})"
            )
        if self.batch_size is not None and self.batch_size < 4:
            raise InvalidInput(f"batch_size must be at least 4; got {self.batch_size}")
        _positive_int("calibration_samples", self.calibration_samples)
        if self.score_samples is not None:
            _positive_int("score_samples", self.score_samples)
        if not isinstance(self.patience, int) or self.patience < 0:
            raise InvalidInput(f"patience must be a non-negative int; got {self.patience!r}")
        if not isinstance(self.seed, int):
            raise InvalidInput(f"seed must be an int; got {self.seed!r}")
        if self.threads is not None:
            _positive_int("threads", self.threads)
        for name in (
            "lr", "alpha", "event_alpha", "beta", "momentum", "feedback_negative_weight",
            "input_noise",
        ):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidInput(f"{name} must be a finite number >= 0; got {value!r}")
        if self.lr <= 0:
            raise InvalidInput(f"lr must be positive; got {self.lr}")
        if not (0.0 <= self.val_fraction < 1.0):
            raise InvalidInput(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        check_quantile(self.threshold_quantile)
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InvalidInput(f"grad_clip must be positive or None; got {self.grad_clip}")
        if self.warm_start_normalisation not in ("keep", "refit"):
            raise InvalidInput(
                "warm_start_normalisation must be 'keep' or 'refit'; "
                f"got {self.warm_start_normalisation!r}"
            )


@dataclass
class TrainingData:
    """Windows and optional per-step labels, as the caller has them."""

    windows: np.ndarray  # (N, T, F) float, raw (un-normalised) sensor values
    labels: np.ndarray | None = None  # (N, T) int: index into classes, -1 = unlabelled step


@dataclass(frozen=True)
class Progress:
    """Reported after each round of training: an epoch with an explicit epoch budget, else
    `eval_every` steps. ``eta_seconds`` assumes the whole budget runs."""

    epoch: int  # 1-based, the round just finished
    epochs: int  # rounds in the budget
    train_loss: float
    val_loss: float | None
    eta_seconds: float | None
    step: int = 0  # optimiser steps run so far
    steps: int = 0  # the step budget


def check_quantile(quantile: float) -> None:
    if not (isinstance(quantile, int | float) and 0.0 <= quantile <= 1.0):
        raise InvalidInput(f"threshold quantile must be in [0, 1]; got {quantile!r}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{name} must be a positive int; got {value!r}")
