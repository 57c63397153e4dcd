"""SS vs ES classification on BasicMotions with few labels (issue 2; the preprint's Table 10).

For each seed and each label count n, n of the 40 training windows are labelled (stratified: n/4
per class, the remainder spread over random classes) and the rest stay unlabelled. The same
ModelConfig (recurrent flavour, Table 15 sizes) is trained as `variant="ss"` (labelled +
unlabelled windows, 1:1 batches) and as `variant="es"` (the labelled windows, cross-entropy only),
on the same labelled subset. Each model classifies the 40 test windows by the argmax of the
window-level predict_proba (the mean of the per-step pi); we report accuracy and log-loss.

Training protocol: no validation split and no early stopping (with 4-16 labels a validation split
holds 0-3 labelled windows, so early stopping on it is noise; the preprint compares "fully
converged models"). Both variants get the same budget of optimiser steps; epochs are derived from
it because an SS epoch is a pass over the unlabelled windows and an ES epoch one over the labelled
ones. batch_size 16 instead of 64, so that an epoch of 40 windows has more than one step.
A sensitivity row trains ES again with a short budget (ES fits 4-16 windows in ~100 steps and then
only grows more confident), to show how much the comparison depends on that choice.

    .venv/bin/python -m benchmarks.models.ss_vs_es             # 5 seeds (the RESULTS.md figure)
    .venv/bin/python -m benchmarks.models.ss_vs_es --quick     # smoke test, < 60 s
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
    log_loss,
    markdown_table,
    step_labels,
    steps_per_epoch,
    stratified_pick,
    write_json,
)


def run_one(
    variant: str,
    train: Any,
    test: Any,
    labelled: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    n_lab = int(labelled.sum())
    per_epoch = steps_per_epoch(variant, labelled.size - n_lab, n_lab, batch_size)
    epochs = epochs_for(steps, per_epoch)
    tc = models.TrainConfig(epochs=epochs, batch_size=batch_size, val_fraction=0.0, seed=seed)
    started = time.perf_counter()
    model = models.fit(
        models.TrainingData(train.windows, step_labels(train.y, labelled, train.windows.shape[1])),
        classes=class_specs(CLASS_NAMES),
        channels=CHANNELS,
        model_config=models.ModelConfig(flavour="recurrent", variant=variant),  # type: ignore[arg-type]
        train_config=tc,
    )
    seconds = time.perf_counter() - started
    probs = model.predict_proba(test.windows)  # (40, 4) window level
    return {
        "variant": variant,
        "seed": seed,
        "n_labels": n_lab,
        "epochs": epochs,
        "steps": epochs * per_epoch,
        "accuracy": float((probs.argmax(axis=1) == test.y).mean()),
        "log_loss": log_loss(probs, test.y),
        "fit_seconds": round(seconds, 2),
        "final_train_loss": model.metrics.get("final_train_loss"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", type=int, nargs="+", default=[4, 8, 16, 40])
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps per fit")
    parser.add_argument(
        "--es-short-steps", type=int, default=100, help="ES sensitivity budget; 0 = skip"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps: a smoke test")
    parser.add_argument("--out", default="ss_vs_es")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.es_short_steps = 1, 60, 20
        args.out += "_quick"
    models.set_threads(args.threads)

    train, test = load_basicmotions("train"), load_basicmotions("test")
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        for n in args.labels:
            labelled = stratified_pick(train.y, n, np.random.default_rng(10_000 + 97 * seed + n))
            arms = [("ss", args.steps), ("es", args.steps)]
            if args.es_short_steps:
                arms.append(("es", args.es_short_steps))
            for variant, steps in arms:
                run = run_one(
                    variant, train, test, labelled,
                    steps=steps, batch_size=args.batch_size, seed=seed,
                )  # fmt: skip
                run["arm"] = variant.upper() + ("" if steps == args.steps else f"@{steps}")
                runs.append(run)
                print(
                    f"seed {seed} labels {n:>2} {run['arm']:<7} acc {run['accuracy']:.3f} "
                    f"log-loss {run['log_loss']:.3f} ({run['fit_seconds']:.1f} s)",
                    flush=True,
                )

    arms_seen = list(dict.fromkeys(r["arm"] for r in runs))
    summary: dict[str, Any] = {}
    rows = []
    for n in args.labels:
        row = [str(n)]
        for metric in ("accuracy", "log_loss"):
            for arm in arms_seen:
                values = [r[metric] for r in runs if r["arm"] == arm and r["n_labels"] == n]
                summary.setdefault(arm, {}).setdefault(str(n), {})[metric] = values
                row.append(fmt(values))
        rows.append(row)
    header = ["labels"] + [f"{a} acc" for a in arms_seen] + [f"{a} log-loss" for a in arms_seen]
    table = markdown_table(header, rows)
    total = time.perf_counter() - started
    payload = {
        "benchmark": "ss_vs_es",
        "args": vars(args),
        "env": environment(args.threads),
        "wall_seconds": round(total, 1),
        "summary": summary,
        "runs": runs,
        "table": table,
    }
    path = write_json(args.out, payload)
    print(
        f"\nSS vs ES on BasicMotions test (40 windows), mean ± sd over {args.seeds} seed(s), "
        f"{args.steps} steps, batch {args.batch_size}, {args.threads} thread(s), "
        f"{total:.0f} s wall\n"
    )
    print(table)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
