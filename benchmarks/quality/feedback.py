"""Task (d): operator feedback. A synthetic plant stream (`data.plant`, 12,000 steps) is split
in time into a clean training slice (4,000 steps) and a feedback and a test slice (4,000 each),
each with four faults of kinds drawn at random (seeded). Windows: 64 steps, stride 32.

Vigil, per seed and arm, on a series of its own:
1. the training slice is ingested and trained (version 1);
2. the feedback and test slices are posted to /v1/score (not ingested: the feedback windows
   reach the model only through the labels, as a client's posted windows do);
3. in arm "fp", the k = 10 highest-scoring *normal* feedback windows are marked
   `false_positive` by score_id; in arm "fp+fn" every fault window the service did not flag
   (`is_anomaly` false) is also marked `false_negative`; arm "none" marks nothing, so that
   its retrain shows what a second round of (warm-started) training does without feedback;
   arm "fn" (not run by default: `--arms`) marks the missed faults alone, which separates
   what `false_negative` marks do from what the false alarms beside them do;
4. a retrain (POST /train after the last label; a retrain the label count queued is waited
   for, see common.Vigil.train);
5. the test slice is scored again by whatever version is active. If the retrain was kept as a
   candidate, that is version 1 again, and a "candidate" row scores the retrained version
   after activating it by hand, so that a refusal and its cost are both visible.

Metrics on the untouched test slice, before and after: ROC-AUC, false-positive rate at recall
0.5 and 0.8, recall at a false-positive rate of 0.05.

Peers: IsolationForest and our EU VAE, refitted with their own 10 highest-scoring normal
feedback windows added to the training windows (an unsupervised detector has no use for
`false_negative` marks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.quality.common import (
    Timer,
    Vigil,
    feedback_metrics,
    job_summary,
    log,
    run_peers,
)
from benchmarks.quality.data import (
    FAULT_KINDS,
    cut,
    inject,
    plan_mixed,
    plant,
    window_starts,
    window_truth,
)

WINDOW, STRIDE = 64, 32
TRAIN, SLICE = 4_000, 4_000
FAULTS_PER_SLICE = 4
K_FALSE_POSITIVES = 10
ARMS = ("none", "fp", "fp+fn", "fn")  # "none": a retrain without feedback, the control
DEFAULT_ARMS = ARMS[:3]
QUICK_ARMS = ("fp+fn",)


def slices(seed: int) -> dict[str, Any]:
    stream = plant(TRAIN + 2 * SLICE, seed)
    train_values = stream.values[:TRAIN]
    sd = train_values.std(axis=0)
    rng = np.random.default_rng([seed, 31])
    starts = window_starts(SLICE, WINDOW, STRIDE)
    out: dict[str, Any] = {
        "stream": stream,
        "train_values": train_values,
        "train": cut(train_values, window_starts(TRAIN, WINDOW, STRIDE), WINDOW),
    }
    for i, name in enumerate(("feedback", "test")):
        values = stream.values[TRAIN + i * SLICE : TRAIN + (i + 1) * SLICE]
        kinds = [str(k) for k in rng.choice(FAULT_KINDS, FAULTS_PER_SLICE, replace=False)]
        plan = plan_mixed(kinds, SLICE, rng, len(stream.channels))
        out[name] = cut(inject(values, plan, sd, rng), starts, WINDOW)
        out[f"{name}_truth"] = window_truth(starts, WINDOW, plan)
        out[f"{name}_faults"] = [(f.kind, f.start, f.end, f.channel) for f in plan]
    return out


def run(
    vigil: Vigil, seeds: list[int], *, quick: bool, arms: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    arms = arms or (QUICK_ARMS if quick else DEFAULT_ARMS)
    data = {seed: slices(seed) for seed in seeds}
    cases: list[dict[str, Any]] = []
    for seed in seeds:
        d = data[seed]
        for arm in arms:
            timer = Timer()
            with timer.phase("ingest"):
                series_id = vigil.create_series(
                    f"d-plant-{arm.replace('+', '-')}-s{seed}",
                    d["stream"].channels,
                    window_size=WINDOW,
                    stride=STRIDE,
                )
                vigil.ingest(series_id, d["train_values"])
            job_id = vigil.train(series_id)
            log(f"(d) plant arm {arm} seed {seed}: training slice ingested, job {job_id} queued")
            cases.append(
                {"seed": seed, "arm": arm, "series_id": series_id, "jobs": [job_id], "timer": timer}
            )

    rows: list[dict[str, Any]] = []
    for seed in seeds:
        rows += _peers(data[seed], seed)

    # Round 1: the first version scores both slices; the operator marks feedback windows.
    for case in cases:
        d = data[case["seed"]]
        job = vigil.wait_jobs(case["jobs"][-1:])[case["jobs"][-1]]
        case["first"] = job_summary(job)
        if job["status"] != "succeeded":
            log(f"(d) job {job['id']} failed: {job['error']}")
            continue
        timer: Timer = case["timer"]
        timer.add("train", case["first"]["job_seconds"] or 0.0)
        with timer.phase("score"):
            fb = vigil.score_version(case["series_id"], d["feedback"], job["model_version"])
            before = vigil.score_version(case["series_id"], d["test"], job["model_version"])
        case["before"] = before
        truth = d["feedback_truth"]
        normal = np.flatnonzero(~truth)
        false_alarms = normal[np.argsort(-fb.adjusted_score[normal], kind="stable")]
        marked_fp = false_alarms[:K_FALSE_POSITIVES]
        if case["arm"] in ("none", "fn"):
            marked_fp = marked_fp[:0]
        missed = np.flatnonzero(truth & ~fb.is_anomaly) if case["arm"] in ("fp+fn", "fn") else []
        with timer.phase("label"):
            for i in marked_fp:
                vigil.label_score(fb.score_id[i], "false_positive")
            for i in missed:
                vigil.label_score(fb.score_id[i], "false_negative")
        case["marked"] = {
            "false_positive": len(marked_fp),
            "false_positive_flagged": int(fb.is_anomaly[marked_fp].sum()),
            "false_negative": len(missed),
            "feedback_faulty": int(truth.sum()),
            "feedback_flagged_faulty": int((truth & fb.is_anomaly).sum()),
            "feedback_flagged_normal": int((~truth & fb.is_anomaly).sum()),
        }
        case["jobs"].append(vigil.train(case["series_id"]))
        log(
            f"(d) Vigil arm {case['arm']} seed {case['seed']}: marked {len(marked_fp)} "
            f"false_positive ({case['marked']['false_positive_flagged']} of them alarms) and "
            f"{len(missed)} false_negative; retrain job {case['jobs'][-1]} queued"
        )
        rows.append(_row(case, "Vigil", "before", before, d, case["first"]))

    # Round 2: the test slice again, by the version the service chose, and by the candidate.
    for case in cases:
        if "before" not in case:
            continue
        d = data[case["seed"]]
        job = vigil.wait_jobs(case["jobs"][-1:])[case["jobs"][-1]]
        info = job_summary(job) | {"marked": case["marked"]}
        if job["status"] != "succeeded":
            log(f"(d) retrain job {job['id']} failed: {job['error']}")
            rows.append(_row(case, "Vigil", "after", None, d, info))
            continue
        case["timer"].add("retrain", info["job_seconds"] or 0.0)
        listing = vigil.versions(case["series_id"])
        active = listing["active_version"]
        info["active_version"] = active
        info["versions"] = [
            {"version": v["version"], "status": v["status"], "note": v["note"]}
            for v in listing["versions"]
        ]
        with case["timer"].phase("score"):
            after = vigil.score_version(case["series_id"], d["test"], active)
        rows.append(_row(case, "Vigil", "after", after, d, info))
        rows[-1]["seconds"] = round(case["timer"].total, 3)
        log(
            f"(d) Vigil arm {case['arm']} seed {case['seed']}: retrain version "
            f"{job['model_version']} {'activated' if info.get('activated') else 'NOT activated'}"
            f" ({info.get('note') or 'no note'}); test scored by version {after.model_version}"
        )
        if active != job["model_version"]:
            vigil.activate(case["series_id"], job["model_version"])
            forced = vigil.score_version(case["series_id"], d["test"], job["model_version"])
            rows.append(_row(case, "Vigil", "candidate", forced, d, {"forced": True}))
    return rows


def _row(
    case: dict[str, Any],
    method: str,
    phase: str,
    scored: Any,
    d: dict[str, Any],
    service: dict[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task": "d",
        "arm": case["arm"],
        "seed": case["seed"],
        "method": method,
        "phase": phase,
    }
    if scored is not None:
        row |= feedback_metrics(scored.adjusted_score, d["test_truth"])
        row["scored_version"] = scored.model_version
        row["alarm_recall"] = float(scored.is_anomaly[d["test_truth"]].mean())
        row["alarm_fpr"] = float(scored.is_anomaly[~d["test_truth"]].mean())
    row["service"] = service
    if phase == "before":
        row["faults"] = {"feedback": d["feedback_faults"], "test": d["test_faults"]}
    return row


def _peers(d: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """IsolationForest and EU, before and after adding their own top-10 false alarms."""
    rows = []
    channels = d["stream"].channels
    only = ("IsolationForest", "EU")
    before = run_peers(d["train"], [d["feedback"], d["test"]], channels, seed, only=only)
    normal = np.flatnonzero(~d["feedback_truth"])
    for method, ((fb, test), seconds) in before.items():
        marked = normal[np.argsort(-fb[normal], kind="stable")][:K_FALSE_POSITIVES]
        train = np.concatenate([d["train"], d["feedback"][marked]])
        after = run_peers(train, [d["test"]], channels, seed, only=(method,))
        (test_after,), seconds_after = after[method]
        for phase, scores, secs in (
            ("before", test, seconds),
            ("after", test_after, seconds + seconds_after),
        ):
            row = {"task": "d", "arm": "fp", "seed": seed, "method": method, "phase": phase}
            row |= feedback_metrics(scores, d["test_truth"])
            row["seconds"] = round(secs, 3)
            rows.append(row)
        log(
            f"(d) {method} seed {seed}: ROC-AUC {rows[-2]['roc_auc']:.3f} -> "
            f"{rows[-1]['roc_auc']:.3f} after {len(marked)} false alarms joined its training data"
        )
    return rows
