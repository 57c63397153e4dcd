"""Data-quality checks: what a density model cannot be trusted to see.

A likelihood model scores how unusual a window looks; some failures of the data itself are
better caught by plain rules, each naming the check and the channel:

- stuck: a channel that moves within nearly every training window (STUCK_QUANTILE of them)
  does not move at all within this one (its span is at most STUCK_SHARE of its median
  training span): a frozen sensor, or a flat-lined transmitter;
- out_of_range: a value beyond the range seen in training, by more than RANGE_MARGIN of that
  range on either side;
- dropout: a run of at least max(DROPOUT_MIN_STEPS, T / 4) exact zeros on a channel that was
  almost never exactly zero in training (at most DROPOUT_ZERO_SHARE of its values): signal
  loss read as zero.

The profile is fitted on the windows that teach the model normal behaviour and travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STUCK, OUT_OF_RANGE, DROPOUT = 1, 2, 4  # bits of a (window, channel) check code
CHECKS = {STUCK: "stuck", OUT_OF_RANGE: "out_of_range", DROPOUT: "dropout"}

STUCK_QUANTILE = 0.01  # the channel moves in all but 1 % of the training windows
STUCK_SHARE = 1e-3  # "does not move": a span at most this share of the median training span
RANGE_MARGIN = 0.1  # beyond the training range by more than 10 % of it
DROPOUT_MIN_STEPS = 3
DROPOUT_ZERO_SHARE = 1e-3


@dataclass(frozen=True)
class DataProfile:
    """Per channel: the training range, the median within-window span, whether the channel
    moves in nearly every window, and the share of exact zeros."""

    low: np.ndarray  # (F,)
    high: np.ndarray  # (F,)
    median_span: np.ndarray  # (F,)
    moving: np.ndarray  # (F,) bool
    zero_share: np.ndarray  # (F,)

    @classmethod
    def fit(cls, windows: np.ndarray) -> DataProfile:
        """windows (N, T, F) raw values, N >= 1."""
        x = np.asarray(windows, dtype=np.float64)
        spans = x.max(axis=1) - x.min(axis=1)  # (N, F)
        median_span = np.median(spans, axis=0)
        floor = np.quantile(spans, STUCK_QUANTILE, axis=0)
        return cls(
            low=x.min(axis=(0, 1)),
            high=x.max(axis=(0, 1)),
            median_span=median_span,
            moving=floor > STUCK_SHARE * median_span,
            zero_share=(x == 0.0).mean(axis=(0, 1)),
        )

    def check(self, windows: np.ndarray) -> np.ndarray:
        """(N, T, F) raw windows -> (N, F) uint8: the bits of the checks each channel fails."""
        x = np.asarray(windows, dtype=np.float64)
        T = x.shape[1]
        spans = x.max(axis=1) - x.min(axis=1)  # (N, F)
        stuck = self.moving & (spans <= STUCK_SHARE * self.median_span)
        margin = RANGE_MARGIN * (self.high - self.low)
        outside = ((x > self.high + margin) | (x < self.low - margin)).any(axis=1)
        dropout = np.zeros_like(stuck)
        rare_zero = self.zero_share <= DROPOUT_ZERO_SHARE
        zeros = x[:, :, rare_zero] == 0.0  # (N, T, F')
        if zeros.any():  # NOTE: the step-by-step run length only for batches that need it
            run = longest_run(zeros)  # (N, F')
            dropout[:, rare_zero] = run >= max(DROPOUT_MIN_STEPS, T // 4)
        codes = stuck * STUCK | outside * OUT_OF_RANGE | dropout * DROPOUT
        return np.asarray(codes, dtype=np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "median_span": self.median_span.tolist(),
            "moving": self.moving.tolist(),
            "zero_share": self.zero_share.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataProfile:
        return cls(
            low=np.asarray(data["low"], dtype=np.float64),
            high=np.asarray(data["high"], dtype=np.float64),
            median_span=np.asarray(data["median_span"], dtype=np.float64),
            moving=np.asarray(data["moving"], dtype=bool),
            zero_share=np.asarray(data["zero_share"], dtype=np.float64),
        )


def longest_run(flags: np.ndarray) -> np.ndarray:
    """(N, T, F) bool -> (N, F) the longest run of True along T."""
    best = np.zeros((flags.shape[0], flags.shape[2]), dtype=np.int64)
    current = np.zeros_like(best)
    for t in range(flags.shape[1]):
        current = np.where(flags[:, t], current + 1, 0)
        best = np.maximum(best, current)
    return best


def describe(codes: np.ndarray, channels: tuple[str, ...]) -> list[list[dict[str, str]]]:
    """(N, F) codes -> per window, the failed checks as {"check", "channel"}."""
    out: list[list[dict[str, str]]] = []
    for row in codes.tolist():
        found = [
            {"check": name, "channel": channels[f]}
            for f, code in enumerate(row)
            if code
            for bit, name in CHECKS.items()
            if code & bit
        ]
        out.append(found)
    return out
