"""Task (b): streams with injected faults. Each stream is split in time: its first half is
clean and is the training data; into copies of its second half faults of one kind each are
injected (spikes, level shifts, drifts, stuck sensors, noise bursts, a frequency change,
a correlation break; see `data.inject`), three events per copy. Windows are 64 steps with
stride 32; a window is anomalous when it overlaps a fault.

Streams: the Daphnet recording (real gait accelerometers, 64 Hz, 9 channels) and a synthetic
plant (`data.plant`: vibration in quadrature, load-driven current/flow/pressure, a lagging
temperature, an idle period every 2,000 steps). app/simulator/plant.py's pumps were not reused:
their channels move on a time scale of minutes to hours and carry no oscillation inside a window,
so a frequency change or a phase-based correlation break would have nothing to act on.

Vigil: one series per (stream, seed), the training half ingested (one point a second), trained,
and every test copy's windows posted to /v1/score. Per fault kind the metrics use that copy's
windows; "overall" pools all copies (one threshold for every kind, as a deployment has).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.quality.common import (
    Timer,
    Vigil,
    detection_metrics,
    job_summary,
    log,
    run_peers,
    split,
)
from benchmarks.quality.data import (
    FAULT_KINDS,
    Stream,
    cut,
    daphnet,
    inject,
    plan_faults,
    plant,
    window_starts,
    window_truth,
)

WINDOW, STRIDE = 64, 32
EVENTS_PER_KIND = 3


def streams(seed: int, quick: bool) -> list[Stream]:
    if quick:
        return [plant(4_000, seed)]
    return [daphnet(), plant(8_000, seed)]


def run(vigil: Vigil, seeds: list[int], *, quick: bool) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for seed in seeds:
        for stream in streams(seed, quick):
            half = stream.values.shape[0] // 2
            train_values, test_values = stream.values[:half], stream.values[half:]
            sd = train_values.std(axis=0)
            rng = np.random.default_rng([seed, 29])
            starts = window_starts(test_values.shape[0], WINDOW, STRIDE)
            tests, truths, plans = [], [], {}
            for kind in FAULT_KINDS:
                plan = plan_faults(
                    kind, test_values.shape[0], EVENTS_PER_KIND, rng, len(stream.channels)
                )
                plans[kind] = [(f.start, f.end, f.channel) for f in plan]
                tests.append(cut(inject(test_values, plan, sd, rng), starts, WINDOW))
                truths.append(window_truth(starts, WINDOW, plan))
            train = cut(train_values, window_starts(half, WINDOW, STRIDE), WINDOW)
            timer = Timer()
            with timer.phase("ingest"):
                series_id = vigil.create_series(
                    f"b-{stream.name}-s{seed}", stream.channels, window_size=WINDOW, stride=STRIDE
                )
                vigil.ingest(series_id, train_values)
            job_id = vigil.train(series_id)
            log(
                f"(b) {stream.name} seed {seed}: {half} points ingested, job {job_id} queued; "
                f"{sum(t.sum() for t in truths)} of {sum(t.size for t in truths)} test "
                "windows faulty"
            )
            cases.append(
                {
                    "stream": stream,
                    "seed": seed,
                    "train": train,
                    "tests": tests,
                    "truths": truths,
                    "plans": plans,
                    "series_id": series_id,
                    "job_id": job_id,
                    "timer": timer,
                }
            )

    rows: list[dict[str, Any]] = []
    for case in cases:
        peers = run_peers(case["train"], case["tests"], case["stream"].channels, case["seed"])
        overall = []
        for method, (scores, seconds) in peers.items():
            rows += _rows(case, method, scores, seconds, {})
            overall.append(f"{method} {rows[-1]['roc_auc']:.2f}")
        log(f"(b) peers {case['stream'].name} seed {case['seed']}: overall " + ", ".join(overall))

    for case in cases:
        job = vigil.wait_jobs([case["job_id"]])[case["job_id"]]
        info = job_summary(job)
        name, seed = case["stream"].name, case["seed"]
        if job["status"] != "succeeded":
            log(f"(b) job {case['job_id']} failed: {job['error']}")
            rows.append(
                {"task": "b", "stream": name, "seed": seed, "method": "Vigil", "kind": "overall"}
                | {"service": info}
            )
            continue
        timer: Timer = case["timer"]
        timer.add("train", info["job_seconds"] or 0.0)
        with timer.phase("score"):
            scored = vigil.score_version(
                case["series_id"], np.concatenate(case["tests"]), job["model_version"]
            )
        info["scored_version"] = scored.model_version
        sizes = [t.shape[0] for t in case["tests"]]
        scores = split(scored.adjusted_score, sizes)
        alarms = split(scored.is_anomaly, sizes)
        new = _rows(case, "Vigil", scores, timer.total, info, alarms)
        rows += new
        log(
            f"(b) Vigil {name} seed {seed}: overall ROC-AUC {new[-1]['roc_auc']:.3f} "
            f"(job {case['job_id']}, {info.get('stopped')} after {info.get('steps')} steps)"
        )
    return rows


def _rows(
    case: dict[str, Any],
    method: str,
    scores: list[np.ndarray],
    seconds: float,
    service: dict[str, Any],
    alarms: list[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    base = {"task": "b", "stream": case["stream"].name, "seed": case["seed"], "method": method}
    out = []
    for i, kind in enumerate(FAULT_KINDS):
        truth = case["truths"][i]
        row = base | {"kind": kind, **detection_metrics(scores[i], truth)}
        row |= {"n_windows": int(truth.size), "n_anomalous": int(truth.sum())}
        if alarms is not None:  # the service's own threshold: recall and false-alarm rate
            row["alarm_recall"] = float(alarms[i][truth].mean())
            row["alarm_fpr"] = float(alarms[i][~truth].mean())
        out.append(row)
    truth = np.concatenate(case["truths"])
    overall = base | {"kind": "overall", **detection_metrics(np.concatenate(scores), truth)}
    overall |= {"n_windows": int(truth.size), "n_anomalous": int(truth.sum())}
    if alarms is not None:
        flags = np.concatenate(alarms)
        overall["alarm_recall"] = float(flags[truth].mean())
        overall["alarm_fpr"] = float(flags[~truth].mean())
    overall["seconds"] = round(seconds, 3)
    overall["faults"] = case["plans"]
    if service:
        overall["service"] = service
    out.append(overall)
    return out
