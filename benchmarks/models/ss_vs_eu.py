"""SS vs EU anomaly detection on BasicMotions, one class held out (issue 2; Tables 5 and 11).

For each held-out class c and each seed: train on the 30 training windows of the other three
classes, as `variant="ss"` with their class labels (three normal-kind classes) and as
`variant="eu"` without labels; score the 40 test windows with the reconstruction probability
(L samples, logsumexp; `ScoreBatch.raw_score`, whose order equals the calibrated score's) and
compute the ROC-AUC of "c is anomalous" against the other 30 test windows. Optionally an SS arm
with only k labels per normal class (`--few-labels k`), the rest unlabelled.

Training protocol as in ss_vs_es: no validation split, no early stopping, the same budget of
optimiser steps for every arm (epochs derived from it), batch_size 16. Scoring uses a fixed seed.

    .venv/bin/python -m benchmarks.models.ss_vs_eu             # 5 seeds (the RESULTS.md figure)
    .venv/bin/python -m benchmarks.models.ss_vs_eu --quick     # smoke test, < 60 s
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

import models
from benchmarks.models.common import (
    CHANNELS,
    CLASS_NAMES,
    class_specs,
    environment,
    epochs_for,
    fmt,
    load_basicmotions,
    markdown_table,
    mean_sd,
    roc_auc,
    step_labels,
    steps_per_epoch,
    stratified_pick,
    write_json,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps per fit")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16, help="L for the anomaly score")
    parser.add_argument(
        "--few-labels", type=int, default=0, help="also SS with k labels per class; 0 = skip"
    )
    parser.add_argument("--held-out", nargs="+", default=list(CLASS_NAMES), choices=CLASS_NAMES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps: a smoke test")
    parser.add_argument("--out", default="ss_vs_eu")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = 1, 60
        args.out += "_quick"
    models.set_threads(args.threads)

    train, test = load_basicmotions("train"), load_basicmotions("test")
    T = train.windows.shape[1]
    arms = ["SS", "EU"] + ([f"SS-{args.few_labels}/class"] if args.few_labels else [])
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for held_name in args.held_out:
        held = CLASS_NAMES.index(held_name)
        normal_names = [n for n in CLASS_NAMES if n != held_name]
        keep = train.y != held
        windows = train.windows[keep]
        # class indices among the three normal classes
        y = np.array([normal_names.index(CLASS_NAMES[c]) for c in train.y[keep]])
        positive = test.y == held
        for seed in range(args.seeds):
            for arm in arms:
                if arm == "EU":
                    variant, labels, n_lab = "eu", None, 0
                else:
                    variant = "ss"
                    if arm == "SS":
                        mask = np.ones(y.size, dtype=bool)
                    else:
                        rng = np.random.default_rng(20_000 + 97 * seed + held)
                        mask = stratified_pick(y, args.few_labels * len(normal_names), rng)
                    labels, n_lab = step_labels(y, mask, T), int(mask.sum())
                per_epoch = steps_per_epoch(variant, y.size - n_lab, n_lab, args.batch_size)
                epochs = epochs_for(args.steps, per_epoch)
                tc = models.TrainConfig(
                    epochs=epochs, batch_size=args.batch_size, val_fraction=0.0, seed=seed
                )
                t0 = time.perf_counter()
                model = models.fit(
                    models.TrainingData(windows, labels),
                    classes=class_specs(normal_names),
                    channels=CHANNELS,
                    model_config=models.ModelConfig(flavour="recurrent", variant=variant),  # type: ignore[arg-type]
                    train_config=tc,
                )
                fit_seconds = time.perf_counter() - t0
                batch = model.score(test.windows, n_samples=args.samples, seed=0)
                auc = roc_auc(batch.raw_score, positive)
                runs.append({
                    "held_out": held_name, "seed": seed, "arm": arm, "n_labels": n_lab,
                    "epochs": epochs, "steps": epochs * per_epoch, "auc": auc,
                    "fit_seconds": round(fit_seconds, 2),
                    "final_train_loss": model.metrics.get("final_train_loss"),
                })  # fmt: skip
                print(
                    f"held out {held_name:<9} seed {seed} {arm:<11} AUC {auc:.3f} "
                    f"({fit_seconds:.1f} s)",
                    flush=True,
                )

    summary: dict[str, Any] = {}
    rows = []
    for held_name in args.held_out:
        row = [held_name]
        for arm in arms:
            values = [r["auc"] for r in runs if r["arm"] == arm and r["held_out"] == held_name]
            summary.setdefault(arm, {})[held_name] = values
            row.append(fmt(values))
        rows.append(row)
    # the mean over held-out classes, per seed, then mean ± sd over seeds
    mean_row = ["mean of classes"]
    for arm in arms:
        per_seed = [
            float(np.mean([r["auc"] for r in runs if r["arm"] == arm and r["seed"] == s]))
            for s in range(args.seeds)
        ]
        summary[arm]["mean_over_classes_per_seed"] = per_seed
        mean_row.append(fmt(per_seed))
    rows.append(mean_row)
    # paired difference SS - EU per (class, seed)
    diffs = [
        r["auc"] - e["auc"]
        for r in runs
        for e in runs
        if r["arm"] == "SS" and e["arm"] == "EU"
        and r["held_out"] == e["held_out"] and r["seed"] == e["seed"]
    ]  # fmt: skip
    wins = sum(d > 0 for d in diffs)
    summary["ss_minus_eu"] = {"diffs": diffs, "mean_sd": mean_sd(diffs), "ss_wins": wins}
    table = markdown_table(["held-out class"] + [f"{a} AUC" for a in arms], rows)
    total = time.perf_counter() - started
    payload = {
        "benchmark": "ss_vs_eu",
        "args": vars(args),
        "env": environment(args.threads),
        "wall_seconds": round(total, 1),
        "summary": summary,
        "runs": runs,
        "table": table,
    }
    path = write_json(args.out, payload)
    print(
        f"\nSS vs EU ROC-AUC on BasicMotions test (10 anomalous vs 30 normal windows), "
        f"mean ± sd over {args.seeds} seed(s), {args.steps} steps, L = {args.samples}, "
        f"{args.threads} thread(s), {total:.0f} s wall\n"
    )
    print(table)
    m, s = summary["ss_minus_eu"]["mean_sd"]
    print(f"\nSS - EU per (class, seed): {m:+.3f} ± {s:.3f}; SS higher in {wins}/{len(diffs)}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
