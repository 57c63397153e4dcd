"""Markdown tables from a quality run's JSON (the section of benchmarks/RESULTS.md).

    .venv/bin/python -m benchmarks.quality.report /tmp/vigil-quality.json

Every cell is mean ± sd over the seeds (sample sd; 0 for a deterministic method, whose seeds
differ in nothing it uses). A data set's "mean" row averages over its held-out classes within
each seed first.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

METHODS = ("Vigil", "EU", "IsolationForest", "LOF", "ECOD", "KNN", "ES")
METRIC_NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "best_f1": "best F1"}


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def cell(values: Iterable[Any], digits: int = 3) -> str:
    v = _finite(values)
    if not v:
        return "–"
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["method"] for r in rows}
    return [m for m in METHODS if m in present]


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def section_a(rows: list[dict[str, Any]]) -> str:
    methods = _methods(rows)
    datasets = _ordered(r["dataset"] for r in rows)

    def dataset_mean(dataset: str, method: str, metric: str) -> list[float]:
        per_seed: dict[int, list[float]] = {}
        for r in rows:
            if r["dataset"] == dataset and r["method"] == method:
                per_seed.setdefault(r["seed"], []).extend(_finite([r.get(metric)]))
        return [sum(v) / len(v) for v in per_seed.values() if v]

    out = []
    body = []
    for dataset in datasets:
        for held in _ordered(r["held_out"] for r in rows if r["dataset"] == dataset):
            picked = [r for r in rows if r["dataset"] == dataset and r["held_out"] == held]
            body.append(
                [f"{dataset} / {held}"]
                + [cell(r.get("roc_auc") for r in picked if r["method"] == m) for m in methods]
            )
        body.append(
            [f"**{dataset} mean**"]
            + [f"**{cell(dataset_mean(dataset, m, 'roc_auc'))}**" for m in methods]
        )
    out.append("ROC-AUC, per held-out class (data set / class):\n\n" + table(["", *methods], body))
    for metric in ("pr_auc", "best_f1"):
        body = [
            [dataset] + [cell(dataset_mean(dataset, m, metric)) for m in methods]
            for dataset in datasets
        ]
        out.append(
            f"{METRIC_NAMES[metric]}, mean over held-out classes:\n\n" + table(["", *methods], body)
        )
    return "\n\n".join(out)


def section_b(rows: list[dict[str, Any]]) -> str:
    methods = _methods(rows)
    out = []
    for metric, name in METRIC_NAMES.items():
        body = []
        for stream in _ordered(r["stream"] for r in rows):
            for kind in _ordered(r["kind"] for r in rows if r["stream"] == stream):
                picked = [r for r in rows if r["stream"] == stream and r["kind"] == kind]
                label = f"**{stream} overall**" if kind == "overall" else f"{stream} / {kind}"
                body.append(
                    [label]
                    + [cell(r.get(metric) for r in picked if r["method"] == m) for m in methods]
                )
        out.append(f"{name} per fault kind:\n\n" + table(["", *methods], body))
    alarms = []
    for stream in _ordered(r["stream"] for r in rows):
        picked = [
            r
            for r in rows
            if r["stream"] == stream and r["method"] == "Vigil" and r["kind"] == "overall"
        ]
        alarms.append(
            [
                stream,
                cell((r.get("alarm_recall") for r in picked), 2),
                cell((r.get("alarm_fpr") for r in picked), 3),
            ]
        )
    out.append(
        "Vigil's own alarms (`is_anomaly`, its default 0.99 threshold) on all test windows:\n\n"
        + table(["stream", "recall", "false-positive rate"], alarms)
    )
    return "\n\n".join(out)


def section_c(rows: list[dict[str, Any]]) -> str:
    body = []
    for dataset in _ordered(r["dataset"] for r in rows):
        for n in _ordered(r["n_labels"] for r in rows if r["dataset"] == dataset):
            picked = [r for r in rows if r["dataset"] == dataset and r["n_labels"] == n]
            vigil = [r for r in picked if r["method"] == "Vigil"]
            trained_on = [r.get("service", {}).get("labelled_windows") for r in vigil]
            body.append(
                [
                    dataset,
                    str(n),
                    cell(r.get("accuracy") for r in vigil),
                    cell(r.get("accuracy") for r in picked if r["method"] == "ES"),
                    cell(trained_on, 1),
                ]
            )
    return "Accuracy on the test split:\n\n" + table(
        ["data set", "N labelled", "Vigil", "ES", "labelled windows Vigil trained on"], body
    )


def section_d(rows: list[dict[str, Any]]) -> str:
    metrics = ("roc_auc", "fpr_at_recall_0.5", "fpr_at_recall_0.8", "recall_at_fpr_0.05")
    body = []
    for method in _methods(rows):
        for arm in _ordered(r["arm"] for r in rows if r["method"] == method):
            for phase in ("before", "after", "candidate"):
                picked = [
                    r
                    for r in rows
                    if r["method"] == method and r["arm"] == arm and r["phase"] == phase
                ]
                if not picked:
                    continue
                versions = Counter(r.get("scored_version") for r in picked)
                body.append(
                    [f"{method} ({arm})", phase]
                    + [cell(r.get(m) for r in picked) for m in metrics]
                    + [", ".join(f"v{v}×{n}" for v, n in sorted(versions.items()) if v)]
                )
    text = "On the untouched test slice:\n\n" + table(
        [
            "method (feedback)",
            "model",
            "ROC-AUC",
            "FPR @ recall 0.5",
            "FPR @ recall 0.8",
            "recall @ FPR 0.05",
            "scored by",
        ],
        body,
    )
    retrains = [r for r in rows if r["method"] == "Vigil" and r["phase"] == "after"]
    lines = []
    for r in retrains:
        s = r.get("service", {})
        m = s.get("marked", {})
        lines.append(
            f"- {r['arm']} seed {r['seed']}: marked {m.get('false_positive')} false_positive, "
            f"{m.get('false_negative')} false_negative; retrain job {s.get('job_id')} "
            f"({s.get('reason')}) → version {s.get('model_version')}, "
            + ("activated" if s.get("activated") else f"not activated: {s.get('note')}")
        )
    return text + "\n\nRetrains:\n\n" + "\n".join(lines)


def section_seconds(result: dict[str, Any]) -> str:
    body = []
    for task, data in result["tasks"].items():
        rows = [r for r in data["rows"] if r.get("seconds") is not None]
        methods = _methods(rows)
        cells = [
            f"{m} {cell((r['seconds'] for r in rows if r['method'] == m), 1)}" for m in methods
        ]
        body.append([task, "; ".join(cells), f"{data['wall_seconds']:.0f}"])
    return (
        "Wall seconds per run and method (Vigil: ingest + training job + scoring over HTTP; "
        "peers: fit + score in-process), and the task's wall time:\n\n"
        + table(["task", "seconds per run, mean ± sd", "task wall s"], body)
    )


def service_notes(result: dict[str, Any]) -> str:
    jobs = [
        r["service"]
        for data in result["tasks"].values()
        for r in data["rows"]
        if r.get("method") == "Vigil" and r.get("service", {}).get("job_id")
    ]
    stopped = Counter(str(j.get("stopped")) for j in jobs)
    failed = [j for j in jobs if j.get("status") != "succeeded"]
    refused = [j for j in jobs if j.get("activated") is False]
    steps = sorted(j["steps"] for j in jobs if j.get("steps") is not None)
    best = sorted(j["best_step"] for j in jobs if j.get("best_step") is not None)
    if steps:
        trained = (
            f"optimiser steps median {steps[len(steps) // 2]} (min {steps[0]}), best step "
            f"median {best[len(best) // 2] if best else None}"
        )
    else:  # a build from before the step budget
        epochs = sorted(j["best_epoch"] for j in jobs if j.get("best_epoch") is not None)
        trained = f"best epoch median {epochs[len(epochs) // 2] if epochs else None}"
    return (
        f"Service jobs: {len(jobs)} reported; ended by {dict(stopped)} (early: validation "
        f"loss stopped improving for `VIGIL_TRAIN_PATIENCE` checks); {trained}; "
        f"{len(failed)} failed; {len(refused)} retrains kept as candidates; "
        f"{result.get('auto_retrain_races', 0)} label-queued retrains had started before the "
        "last label."
    )


SECTIONS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d}
TITLES = {
    "a": "(a) Class as anomaly",
    "b": "(b) Streams with injected faults",
    "c": "(c) Semi-supervised classification",
    "d": "(d) Feedback",
}


def markdown(result: dict[str, Any]) -> str:
    p = result["provenance"]
    parts = [
        f"`{p['command']}` at `{p['git_head']}`, {p['date']}: wall "
        f"{result.get('wall_seconds', 0) / 60:.1f} min, load average "
        f"{p['load_average_at_start'][0]:.2f} at the start, CPU steal "
        f"{result.get('cpu_steal_share', 0):.1%}."
    ]
    for task, data in result["tasks"].items():
        parts.append(f"#### {TITLES[task]}\n\n" + SECTIONS[task](data["rows"]))
    parts.append("#### Time\n\n" + section_seconds(result) + "\n\n" + service_notes(result))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, nargs="?", default=Path("/tmp/vigil-quality.json"))
    print(markdown(json.loads(parser.parse_args().path.read_text())))


if __name__ == "__main__":
    main()
