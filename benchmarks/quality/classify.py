"""Task (c): semi-supervised classification with N labelled training samples.

Vigil: a series whose classes are the data set's classes, all of kind `normal` (activities are
not faults); every training sample ingested (seeded order, one window each), N of them labelled
by time range with their class (stratified by class, seeded as in
benchmarks/models/ss_vs_es.py), POST /train; each test sample is posted to /v1/score and
classified by the argmax of `class_probabilities` over the data set's classes (a class the
model never saw a label of is absent from that map and counts as probability 0).

The service holds out the newest 20 % of windows for validation, so a labelled sample that
lands there never supervises the class head: the row records how many labelled windows the job
trained on (`labelled_windows` in the job's metrics).

Peer: the ES classifier (encoder + π, cross-entropy only) on the same N labelled samples, with
the protocol of benchmarks/models/ss_vs_es.py (800 optimiser steps, batch 16, no validation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.models.common import stratified_pick
from benchmarks.quality.common import Timer, Vigil, es_classifier, job_summary, log
from benchmarks.quality.data import LabelledSet, class_slug, load_set

FULL = {"basicmotions": (4, 8, 16, 0), "gunpoint": (4, 8, 16, 0)}  # 0 = every training sample
QUICK = {"basicmotions": (4,)}


def picks(data: LabelledSet, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Repetition `seed`'s labelled samples (a bool mask, stratified by class, seeded as in
    benchmarks/models/ss_vs_es.py) and the order its training samples are ingested in."""
    labelled = stratified_pick(data.train.y, n, np.random.default_rng(10_000 + 97 * seed + n))
    order = np.random.default_rng([seed, n, 17]).permutation(data.train.y.size)
    return labelled, order


def run(vigil: Vigil, seeds: list[int], *, quick: bool) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    cases: list[dict[str, Any]] = []
    for name, counts in plan.items():
        data = load_set(name)
        slugs = [class_slug(c) for c in data.classes]
        n_train, length = data.train.windows.shape[:2]
        for seed in seeds:
            for count in counts:
                n = count or n_train
                labelled, order = picks(data, n, seed)
                timer = Timer()
                with timer.phase("ingest"):
                    series_id = vigil.create_series(
                        f"c-{name}-n{n}-s{seed}",
                        data.channels,
                        window_size=length,
                        stride=length,
                        classes={s: "normal" for s in slugs},
                    )
                    windows = data.train.windows[order]
                    vigil.ingest(series_id, windows.reshape(-1, windows.shape[2]))
                with timer.phase("label"):
                    for position, sample in enumerate(order):
                        if labelled[sample]:
                            start = position * length
                            label = slugs[data.train.y[sample]]
                            vigil.label_range(series_id, start, start + length - 1, label)
                job_id = vigil.train(series_id)
                log(f"(c) {name} N={n} seed {seed}: {n} samples labelled, job {job_id} queued")
                cases.append(
                    {
                        "data": data,
                        "slugs": slugs,
                        "n": n,
                        "seed": seed,
                        "labelled": labelled,
                        "series_id": series_id,
                        "job_id": job_id,
                        "timer": timer,
                    }
                )

    rows: list[dict[str, Any]] = []
    for case in cases:
        data: LabelledSet = case["data"]
        probs, seconds = es_classifier(
            data.train.windows,
            data.train.y,
            case["labelled"],
            case["slugs"],
            data.channels,
            data.test.windows,
            case["seed"],
        )
        accuracy = float((probs.argmax(axis=1) == data.test.y).mean())
        rows.append(_row(case, "ES", accuracy, seconds, {}))
        log(f"(c) ES {data.name} N={case['n']} seed {case['seed']}: accuracy {accuracy:.3f}")

    for case in cases:
        data = case["data"]
        job = vigil.wait_jobs([case["job_id"]])[case["job_id"]]
        info = job_summary(job)
        if job["status"] != "succeeded":
            log(f"(c) job {case['job_id']} failed: {job['error']}")
            rows.append(_row(case, "Vigil", None, None, info))
            continue
        timer: Timer = case["timer"]
        timer.add("train", info["job_seconds"] or 0.0)
        with timer.phase("score"):
            scored = vigil.score_version(case["series_id"], data.test.windows, job["model_version"])
        info["scored_version"] = scored.model_version
        p = np.array([[cp.get(s, 0.0) for s in case["slugs"]] for cp in scored.class_probabilities])
        accuracy = float((p.argmax(axis=1) == data.test.y).mean())
        info["classes_in_pi"] = sum(s in scored.class_probabilities[0] for s in case["slugs"])
        rows.append(_row(case, "Vigil", accuracy, timer.total, info))
        log(
            f"(c) Vigil {data.name} N={case['n']} seed {case['seed']}: accuracy {accuracy:.3f} "
            f"({info.get('labelled_windows')} labelled windows trained on, job {case['job_id']})"
        )
    return rows


def _row(
    case: dict[str, Any],
    method: str,
    accuracy: float | None,
    seconds: float | None,
    service: dict[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task": "c",
        "dataset": case["data"].name,
        "n_labels": case["n"],
        "seed": case["seed"],
        "method": method,
        "accuracy": accuracy,
        "seconds": None if seconds is None else round(seconds, 3),
    }
    if service:
        row["service"] = service
    return row
