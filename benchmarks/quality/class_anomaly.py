"""Task (a): class-as-anomaly. For each data set and held-out class, every method learns the
training samples of the other classes and scores the whole test split; the held-out class is
the anomaly.

Vigil: one series per (held-out class, seed), window_size = sample length = stride, the
training samples ingested back to back (one step a second) in a seeded random order, so that
each stored window is exactly one sample; POST /train; the test samples are posted to
/v1/score as binary windows and ranked by `adjusted_score`. The service holds out its newest
20 % of windows for validation (early stopping, calibration, threshold), so it learns from 80 %
of what the peers learn from: that is how a user gets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.quality.common import (
    Timer,
    Vigil,
    detection_metrics,
    job_summary,
    log,
    run_peers,
)
from benchmarks.quality.data import LabelledSet, load_set

FULL: dict[str, int] = {  # data set -> how many of its classes are held out, in class order
    "basicmotions": 4,
    "gunpoint": 2,
    "arrowhead": 3,
    "italypowerdemand": 2,
    "japanesevowels": 9,
}
QUICK: dict[str, int] = {"basicmotions": 1, "italypowerdemand": 1}


@dataclass
class Case:
    data: LabelledSet
    held_out: int
    seed: int
    train: np.ndarray
    positive: np.ndarray
    series_id: int = 0
    job_id: int = 0
    timer: Timer | None = None


def run(vigil: Vigil, seeds: list[int], *, quick: bool) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    cases: list[Case] = []
    for name, n_held in plan.items():
        data = load_set(name)
        for held in range(n_held):
            for seed in seeds:
                keep = data.train.y != held
                order = np.random.default_rng([seed, held, 13]).permutation(int(keep.sum()))
                cases.append(
                    Case(data, held, seed, data.train.windows[keep][order], data.test.y == held)
                )

    # 1. Every series is created, filled and queued first, so that the service's worker
    #    trains while the peers run here.
    for case in cases:
        timer = case.timer = Timer()
        d = case.data
        length = d.train.windows.shape[1]
        with timer.phase("ingest"):
            case.series_id = vigil.create_series(
                f"a-{d.name}-{d.classes[case.held_out]}-s{case.seed}",
                d.channels,
                window_size=length,
                stride=length,
            )
            vigil.ingest(case.series_id, case.train.reshape(-1, case.train.shape[2]))
        case.job_id = vigil.train(case.series_id)
        log(
            f"(a) {d.name} held-out {d.classes[case.held_out]} seed {case.seed}: "
            f"{case.train.shape[0]} samples ingested, job {case.job_id} queued"
        )

    rows: list[dict[str, Any]] = []
    # 2. Peers, in-process, on the same training samples and test windows.
    for case in cases:
        d = case.data
        peers = run_peers(case.train, [d.test.windows], d.channels, case.seed)
        for method, (scores, seconds) in peers.items():
            rows.append(
                _row(case, method, detection_metrics(scores[0], case.positive), seconds, {})
            )
        log(
            f"(a) peers {d.name} held-out {d.classes[case.held_out]} seed {case.seed}: "
            + ", ".join(f"{r['method']} {r['roc_auc']:.2f}" for r in rows[-len(peers) :])
        )

    # 3. Vigil: wait for each job, then score the test split through the API.
    for case in cases:
        d = case.data
        assert case.timer is not None
        job = vigil.wait_jobs([case.job_id])[case.job_id]
        info = job_summary(job)
        if job["status"] != "succeeded":
            log(f"(a) job {case.job_id} failed: {job['error']}")
            rows.append(_row(case, "Vigil", {}, None, info))
            continue
        case.timer.add("train", info["job_seconds"] or 0.0)
        with case.timer.phase("score"):
            scored = vigil.score_version(case.series_id, d.test.windows, job["model_version"])
        info["scored_version"] = scored.model_version
        metrics = detection_metrics(scored.adjusted_score, case.positive)
        rows.append(_row(case, "Vigil", metrics, case.timer.total, info))
        log(
            f"(a) Vigil {d.name} held-out {d.classes[case.held_out]} seed {case.seed}: "
            f"ROC-AUC {metrics['roc_auc']:.3f} (job {case.job_id}, {info.get('stopped')} "
            f"after {info.get('steps')} steps)"
        )
    return rows


def _row(
    case: Case,
    method: str,
    metrics: dict[str, float],
    seconds: float | None,
    service: dict[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task": "a",
        "dataset": case.data.name,
        "held_out": case.data.classes[case.held_out],
        "seed": case.seed,
        "method": method,
        **metrics,
        "seconds": None if seconds is None else round(seconds, 3),
        "n_train": int(case.train.shape[0]),
        "n_test": int(case.positive.size),
        "n_anomalous": int(case.positive.sum()),
    }
    if service:
        row["service"] = service
    return row
