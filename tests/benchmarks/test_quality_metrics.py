"""The quality benchmark's metrics (benchmarks/quality/common.py) on cases worked by hand.

They must not need scikit-learn: `make test` installs only the `dev` extra."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.quality.common import (
    average_precision,
    best_f1,
    detection_metrics,
    recall_at_fpr,
    split,
)

SCORES = np.array([0.9, 0.8, 0.7, 0.6])
POSITIVE = np.array([True, False, True, False])


def test_average_precision_is_the_step_sum_over_recall() -> None:
    # Recall reaches 1/2 at precision 1 (top window) and 1 at precision 2/3 (top three).
    assert math.isclose(average_precision(SCORES, POSITIVE), 0.5 * 1.0 + 0.5 * 2 / 3)


def test_best_f1_picks_the_best_threshold_without_point_adjust() -> None:
    # Top 1: P 1, R 1/2, F1 2/3. Top 3: P 2/3, R 1, F1 4/5. Top 2 and 4 are worse.
    assert math.isclose(best_f1(SCORES, POSITIVE), 0.8)


def test_tied_scores_enter_together() -> None:
    # One positive tied with one negative at the top: that threshold has precision 1/2.
    scores = np.array([1.0, 1.0, 0.0])
    positive = np.array([True, False, False])
    assert math.isclose(average_precision(scores, positive), 0.5)
    assert math.isclose(best_f1(scores, positive), 2 / 3)
    assert detection_metrics(scores, positive)["roc_auc"] == 0.75


def test_a_perfect_ranking_scores_one_everywhere() -> None:
    scores = np.array([5.0, 4.0, 1.0, 0.0])
    positive = np.array([True, True, False, False])
    assert detection_metrics(scores, positive) == {"roc_auc": 1.0, "pr_auc": 1.0, "best_f1": 1.0}


def test_without_positives_the_metrics_are_undefined() -> None:
    metrics = detection_metrics(SCORES, np.zeros(4, dtype=bool))
    assert all(math.isnan(v) for v in metrics.values())


def test_recall_at_fpr_allows_only_that_share_of_normal_windows_to_alarm() -> None:
    normal = np.arange(20, dtype=float)  # 20 normal windows score 0..19
    scores = np.r_[normal, [18.5, 19.5, 30.0]]
    positive = np.r_[np.zeros(20, dtype=bool), np.ones(3, dtype=bool)]
    # FPR 0.05 admits one false alarm (the 19): the threshold sits above 18, so all three count.
    assert recall_at_fpr(scores, positive, 0.05) == 1.0
    # FPR 0 admits none: only windows above 19 alarm.
    assert math.isclose(recall_at_fpr(scores, positive, 0.0), 2 / 3)


def test_split_undoes_a_concatenation() -> None:
    parts = split(np.arange(7), [3, 4])
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5, 6]]
