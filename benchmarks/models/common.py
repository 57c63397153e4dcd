"""Shared helpers for the model benchmarks: data, label selection, metrics, output.

Nothing here trains a model; each benchmark script does that itself so that its settings are
visible in one place.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "benchmarks" / "data" / "basicmotions"
OUT_DIR = REPO / "benchmarks" / "out"
CLASS_NAMES: tuple[str, ...] = ("Standing", "Walking", "Running", "Badminton")
CHANNELS: tuple[str, ...] = ("accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z")


@dataclass(frozen=True)
class Split:
    windows: np.ndarray  # (N, 100, 6) float64, raw values
    y: np.ndarray  # (N,) int, index into CLASS_NAMES


def load_basicmotions(part: str) -> Split:
    """part 'train' or 'test' -> windows (40, 100, 6) and labels (40,), in sample order."""
    path = DATA_DIR / f"basicmotions_{part}.csv"
    rows: dict[int, list[tuple[int, list[float]]]] = {}
    label_of: dict[int, str] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            sample = int(row["sample"])
            rows.setdefault(sample, []).append((int(row["t"]), [float(row[c]) for c in CHANNELS]))
            label_of[sample] = row["label"]
    samples = sorted(rows)
    windows = np.stack(
        [np.array([v for _, v in sorted(rows[s])], dtype=np.float64) for s in samples]
    )
    y = np.array([CLASS_NAMES.index(label_of[s]) for s in samples], dtype=np.int64)
    return Split(windows, y)


def class_specs(names: Sequence[str]) -> tuple[models.ClassSpec, ...]:
    """Activity classes are all normal-kind: the classification benchmarks treat them as such."""
    return tuple(models.ClassSpec(n, "normal") for n in names)


def step_labels(y: np.ndarray, labelled: np.ndarray, window_size: int) -> np.ndarray:
    """(N,) class indices and a (N,) bool mask -> (N, T) per-step labels, -1 where unlabelled."""
    labels = np.full((y.shape[0], window_size), -1, dtype=np.int64)
    labels[labelled] = y[labelled, None]
    return labels


def stratified_pick(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A bool mask choosing n items, as evenly over the classes present as possible.

    Every class gets floor(n / k) items; the n mod k extra ones go to randomly chosen classes.
    """
    classes = np.unique(y)
    base, extra = divmod(n, classes.size)
    bonus = set(rng.choice(classes, size=extra, replace=False).tolist()) if extra else set()
    mask = np.zeros(y.shape[0], dtype=bool)
    for c in classes:
        members = np.flatnonzero(y == c)
        take = min(members.size, base + (1 if int(c) in bonus else 0))
        mask[rng.choice(members, size=take, replace=False)] = True
    return mask


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney statistic on mid-ranks, so ties count one half."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    i = 0
    while i < scores.size:  # average rank over each run of tied scores
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(probs: np.ndarray, y: np.ndarray, eps: float = 1e-15) -> float:
    """Mean -log p(true class), probabilities clipped to [eps, 1] (sklearn's convention)."""
    p = np.clip(probs[np.arange(y.shape[0]), y], eps, 1.0)
    return float(-np.log(p).mean())


def fpr_at_recall(scores: np.ndarray, positive: np.ndarray, recall: float) -> tuple[float, float]:
    """The false-positive rate at the highest threshold that reaches the given recall.

    An alarm is score >= threshold; the threshold is the k-th highest anomalous score with
    k = ceil(recall * n_anomalous), so ties with normal windows count against the model.
    Returns (fpr, threshold).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    pos = np.sort(scores[positive])[::-1]
    k = max(1, math.ceil(recall * pos.size - 1e-9))
    threshold = float(pos[k - 1])
    fpr = float((scores[~positive] >= threshold).mean())
    return fpr, threshold


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(threads: int) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_head": git_head(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "models_version": models.__version__,
        "torch_threads": threads,
        "cpu": platform.processor() or platform.machine(),
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: object) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def steps_per_epoch(variant: str, n_unlabelled: int, n_labelled: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of models.fit without a validation split (its _batches rule):
    ES iterates over the labelled windows, EU over all (normal-kind) windows, SS over the
    unlabelled ones with labelled ones added 1:1 (half a batch each) when both groups exist."""
    if variant == "es":
        return max(1, math.ceil(n_labelled / batch_size))
    if variant == "eu" or n_unlabelled == 0 or n_labelled == 0:
        return max(1, math.ceil((n_unlabelled + n_labelled) / batch_size))
    return max(1, math.ceil(n_unlabelled / (batch_size // 2)))


def epochs_for(steps: int, per_epoch: int) -> int:
    """Epochs that give at least `steps` optimiser steps."""
    return max(1, math.ceil(steps / per_epoch))
