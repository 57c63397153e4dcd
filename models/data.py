"""Input checks, label bookkeeping and per-channel standardisation.

Every check raises a typed ModelError whose message names what is wrong, so an API can pass it on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.config import FALSE_NEGATIVE, FALSE_POSITIVE, ClassSpec
from models.errors import InvalidInput, UnknownClass

_STD_FLOOR = 1e-8  # a channel whose spread is below this (relative to its level) is constant
STANDARDISED_LIMIT = 1e6
"""Standardised values are clipped to ± this many standard deviations (see Normalisation)."""
_APPLY_CHUNK = 4096  # windows standardised at once: bounds the float64 temporary


def _shape_text(window_size: int | None, n_channels: int | None) -> str:
    t = "T" if window_size is None else str(window_size)
    f = "F" if n_channels is None else str(n_channels)
    return f"(N, {t}, {f})"


def check_windows(
    windows: object,
    *,
    window_size: int | None = None,
    n_channels: int | None = None,
    name: str = "windows",
) -> np.ndarray:
    """Return windows as a finite float array (N, T, F) (float32 stays float32), or raise
    InvalidInput."""
    expected = _shape_text(window_size, n_channels)
    try:
        array = np.asarray(windows)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidInput(f"{name} must be an array of shape {expected}: {exc}") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise InvalidInput(f"{name} must be numeric with shape {expected}; got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidInput(f"{name} must be real-valued; got dtype {array.dtype}")
    if array.ndim != 3:
        raise InvalidInput(f"{name} must have shape {expected}; got {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise InvalidInput(f"{name} is empty; need at least one window")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise InvalidInput(f"{name} must have shape {expected}; got {tuple(array.shape)}")
    if (window_size is not None and array.shape[1] != window_size) or (
        n_channels is not None and array.shape[2] != n_channels
    ):
        raise InvalidInput(f"{name} must have shape {expected}; got {tuple(array.shape)}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    finite = np.isfinite(array).all(axis=(1, 2))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidInput(f"{name} contain NaN or inf at window {bad}")
    return array


def check_labels(labels: object, *, n_windows: int, window_size: int, n_classes: int) -> np.ndarray:
    """Return labels as int64 (N, T) with -1 for unlabelled steps, or raise a typed error."""
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidInput(f"labels must be an integer array of shape (N, T): {exc}") from None
    if array.shape != (n_windows, window_size):
        raise InvalidInput(
            f"labels must have shape ({n_windows}, {window_size}) to match the windows; "
            f"got {tuple(array.shape)}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidInput(f"labels must be integers (-1 = unlabelled); got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < -1:
        w, t = (int(i[0]) for i in np.nonzero(array < -1))
        raise InvalidInput(
            f"label {int(array[w, t])} at window {w}, step {t} is not valid; "
            "use -1 for unlabelled steps"
        )
    if array.size and array.max() >= n_classes:
        raise UnknownClass(f"label index {int(array.max())} is not a class ({n_classes} classes)")
    return array


def check_classes(classes: Sequence[ClassSpec]) -> tuple[ClassSpec, ...]:
    result = tuple(classes)
    if not result:
        raise InvalidInput("classes is empty; need at least one class")
    for spec in result:
        if not isinstance(spec, ClassSpec):
            raise InvalidInput(f"classes must be ClassSpec items; got {spec!r}")
    names = [spec.name for spec in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"class names must be unique; repeated: {', '.join(duplicates)}")
    return result


def check_channels(channels: Sequence[str], n_channels: int) -> tuple[str, ...]:
    result = tuple(channels)
    if len(result) != n_channels:
        raise InvalidInput(
            f"got {len(result)} channel names for windows with {n_channels} channels"
        )
    if any(not isinstance(c, str) or not c for c in result):
        raise InvalidInput("channel names must be non-empty strings")
    if len(set(result)) != len(result):
        raise InvalidInput("channel names must be unique")
    return result


def class_index(classes: Sequence[ClassSpec], name: str) -> int | None:
    for i, spec in enumerate(classes):
        if spec.name == name:
            return i
    return None


def elbo_eligible(labels: np.ndarray | None, classes: Sequence[ClassSpec], n: int) -> np.ndarray:
    """(N,) bool: windows allowed into the ELBO, i.e. without any anomaly-kind labelled step."""
    if labels is None:
        return np.ones(n, dtype=bool)
    anomaly = np.array([spec.kind == "anomaly" for spec in classes] + [False])  # index -1 -> False
    return np.asarray(~anomaly[labels].any(axis=1))


def marks_events(spec: ClassSpec) -> bool:
    """A class that marks events (an anomaly kind, false_positive, false_negative), not a
    regime or activity that a series' windows are sorted into."""
    return spec.kind == "anomaly" or spec.name in (FALSE_POSITIVE, FALSE_NEGATIVE)


def predictable_classes(classes: Sequence[ClassSpec], label_counts: np.ndarray) -> np.ndarray:
    """(K,) bool: the classes pi may predict. The normal-kind classes always (unlabelled
    windows belong there: they are the feedback classes' negatives, loss.py); a class that
    marks events (an anomaly kind, false_positive, false_negative) only once it has labels.
    An event class without labels left in the softmax only takes probability from the others
    (GunPoint's two classes beside a series' built-in anomaly and feedback classes, every
    sample labelled, 3 seeds in-process: 0.84 ± 0.04 with them left out, 0.80 ± 0.12 with
    them in). Every class if none would be left."""
    events = np.array([marks_events(c) for c in classes])
    mask = ~events | (np.asarray(label_counts) > 0)
    return mask if mask.any() else np.ones(len(classes), dtype=bool)


def labelled_windows(labels: np.ndarray | None, n: int) -> np.ndarray:
    """(N,) bool: windows with at least one labelled step."""
    if labels is None:
        return np.zeros(n, dtype=bool)
    return np.asarray((labels >= 0).any(axis=1))


@dataclass(frozen=True)
class Normalisation:
    """Per-channel standardisation fitted on training windows."""

    mean: np.ndarray  # (F,) float64
    std: np.ndarray  # (F,) float64, > 0

    @classmethod
    def fit(cls, windows: np.ndarray) -> Normalisation:
        """Mean and std per channel over all steps of all windows (N, T, F).
        A constant channel (std ~ 0) keeps std 1, so it is only centred: a later deviation is
        then measured in raw units instead of being divided by ~0."""
        mean = windows.mean(axis=(0, 1), dtype=np.float64)
        std = windows.std(axis=(0, 1), dtype=np.float64)
        constant = std <= _STD_FLOOR * np.maximum(1.0, np.abs(mean))
        std = np.where(constant, 1.0, std)
        return cls(mean=mean, std=std)

    def apply(self, windows: np.ndarray) -> np.ndarray:
        """(N, T, F) raw -> (N, T, F) float32 standardised (computed in float64, in chunks).

        Values are clipped at STANDARDISED_LIMIT standard deviations: a finite reading far
        outside float32 once standardised (a sensor fault reporting 3e38) would otherwise
        become inf, and the window's score NaN, which flags nothing. Clipped, it scores as
        the extreme it is."""
        out = np.empty(windows.shape, dtype=np.float32)
        for start in range(0, windows.shape[0], _APPLY_CHUNK):
            chunk = windows[start : start + _APPLY_CHUNK].astype(np.float64)
            standardised = (chunk - self.mean) / self.std
            np.clip(standardised, -STANDARDISED_LIMIT, STANDARDISED_LIMIT, out=standardised)
            out[start : start + _APPLY_CHUNK] = standardised
        return out


# -- missing values -------------------------------------------------------------------------
# A missing value (a JSON null or an empty CSV cell at ingestion) is NaN in a raw window. The
# network never sees one: every window is imputed in this one way before it is standardised,
# at training and at scoring alike, and the share that was missing travels with its score.


def missing_fraction(windows: np.ndarray) -> np.ndarray:
    """(N, T, F) raw windows -> (N,) the share of their values that are missing (NaN)."""
    if windows.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(np.isnan(windows).mean(axis=(1, 2)), dtype=np.float64)


def channel_means(windows: np.ndarray) -> np.ndarray:
    """(N, T, F) raw windows -> (F,) each channel's mean over its present values (0 for a
    channel with none): the fill value for training windows."""
    present = ~np.isnan(windows)
    counts = present.sum(axis=(0, 1))
    totals = np.where(present, windows, 0.0).sum(axis=(0, 1), dtype=np.float64)
    means: np.ndarray = np.divide(totals, counts, out=np.zeros(windows.shape[2]), where=counts > 0)
    return means


def impute_missing(windows: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Missing values forward-filled along time within each window and channel; those with
    nothing before them (a window that starts missing) take `fill` (F,), the channel's training
    mean: 0 in standardised units. Windows without a missing value come back unchanged."""
    missing = np.isnan(windows)
    if not missing.any():
        return windows
    out = windows.copy()
    t = out.shape[1]
    # The index of the last present step at or before each step (-1: none yet), per channel.
    steps = np.where(missing, -1, np.arange(t)[None, :, None])  # (N, T, F)
    last = np.maximum.accumulate(steps, axis=1)
    filled = np.take_along_axis(out, np.maximum(last, 0), axis=1)
    out = np.where(last >= 0, filled, np.broadcast_to(fill.astype(out.dtype), out.shape))
    return out.astype(windows.dtype, copy=False)
