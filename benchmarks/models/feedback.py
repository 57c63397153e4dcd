"""Operator feedback: does labelling false alarms and missed faults lower the false-positive rate?

This is Vigil's own claim (issue 2; the preprint only proposes eq. 6 in §5 and never tests it).

Data: BasicMotions cut into short windows (`--window` steps, `--stride` apart; 20 and 10 give 9
windows per 100-step sample). One activity is the "fault" (`--anomaly`; each of the four in turn by
default), the others are normal.
Per seed, each class's 10 test-split samples are shuffled and halved: 5 samples go to the
*feedback slice*, 5 to the *test slice*, so the two slices share no recording. The 10 train-split
samples of each normal class are the initial training data. Scenario `new-regime` leaves one
normal class (`--regime`) out of the initial training data: a normal mode the model has never
seen, as when a machine starts a new operating regime after deployment.

Per seed:
  1. `before`: SS on the initial windows, no labels, classes = BUILTIN_CLASSES.
  2. Score the feedback slice (L = --samples). Label the `--n-fp` normal windows with the
     highest scores `false_positive` (the top false alarms) and the `--n-fn` fault windows with
     the lowest scores `false_negative` (the missed faults); every step of the window.
  3. Warm-start retrain (`fit(..., warm_start=before, classes=before.classes)`) on the initial
     windows (unlabelled) plus the labelled feedback windows, three ways:
       `feedback`       as shipped (feedback_negative_weight = 1: the PU term on),
       `feedback PU=0`  the same with feedback_negative_weight = 0,
       `retrain only`   control: the false-alarm windows added *unlabelled* (the missed faults
                        left out, since unlabelled they would teach the model to reconstruct
                        faults), so the model sees the same normal data but has no p_fp / p_fn.
  4. Score the test slice with each model. A model is read through several scores:
       score            the calibrated score (no feedback adjustment),
       adjusted         what the service alarms on: score*(1-p_fp)/(1-p_fn), with the guard,
       adjusted, no guard  the same from the raw window-level pi (ScoreBatch.class_probabilities)
                        via models.scoring.adjust, i.e. without the severity guard.
     For each: the false-positive rate at recall 0.8 and 0.9 (threshold = the k-th highest fault
     score of the test slice, so each model gets its own threshold), and the ROC-AUC. Also the
     share of test fault windows whose applied p_fp exceeds 0.5 ("silenced faults").

Training protocol: no validation split, no early stopping, a fixed budget of optimiser steps
(`--steps` for the first model, `--retrain-steps` for each retrain), batch 64 (the default).

    .venv/bin/python -m benchmarks.models.feedback             # the RESULTS.md figures
    .venv/bin/python -m benchmarks.models.feedback --quick     # smoke test, < 60 s
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import models
from benchmarks.models.common import (
    CHANNELS,
    CLASS_NAMES,
    Split,
    environment,
    epochs_for,
    fmt,
    fpr_at_recall,
    load_basicmotions,
    markdown_table,
    mean_sd,
    roc_auc,
    steps_per_epoch,
    write_json,
)
from models.scoring import P_FN_MAX, adjust

RECALLS = (0.8, 0.9)
FP = [c.name for c in models.BUILTIN_CLASSES].index(models.FALSE_POSITIVE)
FN = [c.name for c in models.BUILTIN_CLASSES].index(models.FALSE_NEGATIVE)


@dataclass(frozen=True)
class Windows:
    x: np.ndarray  # (N, W, 6)
    y: np.ndarray  # (N,) activity index
    sample: np.ndarray  # (N,) source sample id within its split


def cut(split: Split, samples: np.ndarray, window: int, stride: int) -> Windows:
    """Cut the given samples (100 steps each) into windows of `window` steps, `stride` apart."""
    starts = range(0, split.windows.shape[1] - window + 1, stride)
    xs, ys, ids = [], [], []
    for s in samples:
        for t in starts:
            xs.append(split.windows[s, t : t + window])
            ys.append(split.y[s])
            ids.append(s)
    return Windows(np.stack(xs), np.array(ys), np.array(ids))


def fit_ss(
    x: np.ndarray,
    labels: np.ndarray | None,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    gamma: float = 1.0,
    warm_start: models.TrainedModel | None = None,
) -> models.TrainedModel:
    n_lab = 0 if labels is None else int((labels >= 0).any(axis=1).sum())
    epochs = epochs_for(steps, steps_per_epoch("ss", x.shape[0] - n_lab, n_lab, batch_size))
    tc = models.TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        val_fraction=0.0,
        seed=seed,
        feedback_negative_weight=gamma,
    )
    return models.fit(
        models.TrainingData(x, labels),
        classes=warm_start.classes if warm_start is not None else models.BUILTIN_CLASSES,
        channels=CHANNELS,
        model_config=models.ModelConfig(flavour="recurrent", variant="ss"),
        train_config=tc,
        warm_start=warm_start,
    )


def readings(model: models.TrainedModel, x: np.ndarray, samples: int) -> dict[str, Any]:
    """A model's scores for x: plain, adjusted (as shipped) and adjusted without the guard."""
    batch = model.score(x, n_samples=samples, seed=0)
    probs = batch.class_probabilities
    trained = np.array(model.label_counts) > 0  # an untrained feedback head counts as p = 0
    p_fp_raw = probs[:, FP] if trained[FP] else np.zeros(x.shape[0])
    p_fn_raw = np.minimum(probs[:, FN], P_FN_MAX) if trained[FN] else np.zeros(x.shape[0])
    return {
        "score": batch.score,
        "adjusted": batch.adjusted_score,
        "adjusted, no guard": adjust(batch.score, p_fp_raw, p_fn_raw),
        "p_fp": batch.p_false_positive,
        "p_fp_raw": p_fp_raw,
        "p_fn": batch.p_false_negative,
        "fp_ceiling": model.calibrations[model.calibration_samples].fp_ceiling,
    }


def metrics(scores: np.ndarray, fault: np.ndarray) -> dict[str, float]:
    out = {f"fpr@{r}": fpr_at_recall(scores, fault, r)[0] for r in RECALLS}
    out["auc"] = roc_auc(scores, fault)
    return out


def run_seed(
    args: argparse.Namespace, anomaly_name: str, seed: int, train: Split, test: Split
) -> dict[str, Any]:
    anomaly = CLASS_NAMES.index(anomaly_name)
    rng = np.random.default_rng(30_000 + seed)
    initial_classes = [c for c in range(len(CLASS_NAMES)) if c != anomaly]
    if args.scenario == "new-regime":
        initial_classes.remove(CLASS_NAMES.index(args.regime))
    initial = cut(
        train, np.flatnonzero(np.isin(train.y, initial_classes)), args.window, args.stride
    )
    fb_samples, test_samples = [], []
    for c in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(test.y == c))
        fb_samples += members[: members.size // 2].tolist()
        test_samples += members[members.size // 2 :].tolist()
    fb = cut(test, np.array(sorted(fb_samples)), args.window, args.stride)
    ts = cut(test, np.array(sorted(test_samples)), args.window, args.stride)
    fb_fault, ts_fault = fb.y == anomaly, ts.y == anomaly
    kw = {"batch_size": args.batch_size, "seed": seed}

    t0 = time.perf_counter()
    before = fit_ss(initial.x, None, steps=args.steps, **kw)

    # feedback: the top false alarms and the most-missed faults of the feedback slice
    fb_score = before.score(fb.x, n_samples=args.samples, seed=0).score
    normal_idx = np.flatnonzero(~fb_fault)
    fault_idx = np.flatnonzero(fb_fault)
    fp_idx = normal_idx[np.argsort(-fb_score[normal_idx], kind="stable")[: args.n_fp]]
    fn_idx = fault_idx[np.argsort(fb_score[fault_idx], kind="stable")[: args.n_fn]]
    W = args.window
    unl = np.full((initial.x.shape[0], W), -1, dtype=np.int64)
    x_fb = np.concatenate([initial.x, fb.x[fp_idx], fb.x[fn_idx]])
    lab_fb = np.concatenate(
        [unl, np.full((fp_idx.size, W), FP), np.full((fn_idx.size, W), FN)]
    ).astype(np.int64)
    models_after = {
        "feedback": fit_ss(x_fb, lab_fb, steps=args.retrain_steps, warm_start=before, **kw),
        "feedback PU=0": fit_ss(
            x_fb, lab_fb, steps=args.retrain_steps, warm_start=before, gamma=0.0, **kw
        ),
        "retrain only": fit_ss(
            np.concatenate([initial.x, fb.x[fp_idx]]), None,
            steps=args.retrain_steps, warm_start=before, **kw,
        ),
    }  # fmt: skip
    fit_seconds = time.perf_counter() - t0

    result: dict[str, Any] = {
        "seed": seed,
        "n_initial": int(initial.x.shape[0]),
        "n_feedback_slice": int(fb.x.shape[0]),
        "n_test_slice": int(ts.x.shape[0]),
        "n_test_faults": int(ts_fault.sum()),
        "fp_labelled_classes": [CLASS_NAMES[c] for c in fb.y[fp_idx]],
        "fit_seconds": round(fit_seconds, 1),
        "readings": {},
    }
    r0 = readings(before, ts.x, args.samples)
    result["readings"]["before"] = metrics(r0["score"], ts_fault)
    for name, model in models_after.items():
        r = readings(model, ts.x, args.samples)
        kinds = ["score"] if name == "retrain only" else ["score", "adjusted", "adjusted, no guard"]
        for kind in kinds:
            result["readings"][f"{name}: {kind}"] = metrics(r[kind], ts_fault)
        if name != "retrain only":
            result[f"{name} diagnostics"] = {
                "fp_ceiling": r["fp_ceiling"],
                "fault_silenced_share": float((r["p_fp"][ts_fault] > 0.5).mean()),
                "fault_silenced_share_no_guard": float((r["p_fp_raw"][ts_fault] > 0.5).mean()),
                "mean_p_fp_normal": float(r["p_fp_raw"][~ts_fault].mean()),
                "mean_p_fp_fault": float(r["p_fp_raw"][ts_fault].mean()),
                "mean_p_fn_normal": float(r["p_fn"][~ts_fault].mean()),
                "mean_p_fn_fault": float(r["p_fn"][ts_fault].mean()),
            }
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """mean ± sd tables and paired differences for the runs of one fault class."""
    summary: dict[str, Any] = {"readings": {}, "paired": {}, "diagnostics": {}}
    rows = []
    for name in runs[0]["readings"]:
        row = [name]
        for key in [f"fpr@{r}" for r in RECALLS] + ["auc"]:
            values = [run["readings"][name][key] for run in runs]
            summary["readings"].setdefault(name, {})[key] = values
            row.append(fmt(values))
        rows.append(row)
    for key in [f"fpr@{r}" for r in RECALLS]:  # paired, per seed
        d = [r["readings"]["feedback: adjusted"][key] - r["readings"]["before"][key] for r in runs]
        summary["paired"][f"feedback - before {key}"] = {
            "diffs": d,
            "mean_sd": mean_sd(d),
            "improved_seeds": sum(x < 0 for x in d),
            "worse_seeds": sum(x > 0 for x in d),
        }
    diag_rows = []
    for arm in ("feedback", "feedback PU=0"):
        diags = [run[f"{arm} diagnostics"] for run in runs]
        summary["diagnostics"][arm] = {k: [d[k] for d in diags] for k in diags[0]}
        diag_rows.append([arm] + [fmt([d[k] for d in diags]) for k in diags[0]])
    summary["table"] = markdown_table(
        ["model: reading"] + [f"FPR @ recall {r}" for r in RECALLS] + ["ROC-AUC"], rows
    )
    summary["diagnostics_table"] = markdown_table(
        ["arm", *runs[0]["feedback diagnostics"]], diag_rows
    )
    return summary


COMPACT = (
    ("before", "before"),
    ("feedback: adjusted", "feedback"),
    ("feedback: adjusted, no guard", "feedback, no guard"),
    ("feedback PU=0: adjusted", "feedback, PU=0"),
    ("retrain only: score", "retrain only"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scenario", choices=["seen", "new-regime"], default="seen")
    parser.add_argument(
        "--anomaly", nargs="+", choices=CLASS_NAMES, default=list(CLASS_NAMES),
        help="the fault class(es), one experiment each",
    )  # fmt: skip
    parser.add_argument("--regime", choices=CLASS_NAMES, default="Walking")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--n-fp", type=int, default=20, help="false alarms labelled")
    parser.add_argument("--n-fn", type=int, default=5, help="missed faults labelled")
    parser.add_argument("--steps", type=int, default=600, help="steps of the first fit")
    parser.add_argument("--retrain-steps", type=int, default=300, help="steps of each retrain")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16, help="L for the anomaly score")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, few steps: a smoke test")
    parser.add_argument("--out", default=None, help="JSON name (default: feedback_<scenario>)")
    args = parser.parse_args(argv)
    if args.scenario == "new-regime" and args.regime in args.anomaly:
        parser.error("--regime must be a normal class, not an --anomaly class")
    out = args.out or f"feedback_{args.scenario}"
    if args.quick:
        args.seeds, args.steps, args.retrain_steps = 1, 60, 30
        args.anomaly = args.anomaly[:1]
        out += "_quick"
    models.set_threads(args.threads)

    train, test = load_basicmotions("train"), load_basicmotions("test")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for anomaly in args.anomaly:
        runs = []
        for seed in range(args.seeds):
            run = run_seed(args, anomaly, seed, train, test)
            runs.append(run)
            rd = run["readings"]
            print(
                f"fault {anomaly:<9} seed {seed}: FPR@0.8 before {rd['before']['fpr@0.8']:.3f} "
                f"-> feedback {rd['feedback: adjusted']['fpr@0.8']:.3f} (retrain only "
                f"{rd['retrain only: score']['fpr@0.8']:.3f}); FP labels on "
                f"{sorted(set(run['fp_labelled_classes']))} ({run['fit_seconds']} s)",
                flush=True,
            )
        results[anomaly] = {"summary": summarise(runs), "runs": runs}

    compact = []
    for anomaly, res in results.items():
        rd = res["summary"]["readings"]
        for r in RECALLS:
            paired = res["summary"]["paired"][f"feedback - before fpr@{r}"]
            compact.append(
                [anomaly, str(r)]
                + [fmt(rd[key][f"fpr@{r}"]) for key, _ in COMPACT]
                + [f"{paired['improved_seeds']}/{paired['worse_seeds']}"]
            )
    compact_table = markdown_table(
        ["fault", "recall"] + [f"FPR {label}" for _, label in COMPACT] + ["seeds better/worse"],
        compact,
    )
    total = time.perf_counter() - started
    payload = {
        "benchmark": "feedback",
        "args": vars(args),
        "env": environment(args.threads),
        "wall_seconds": round(total, 1),
        "results": results,
        "table": compact_table,
    }
    path = write_json(out, payload)
    first = next(iter(results.values()))["runs"][0]
    print(
        f"\nFeedback on BasicMotions (scenario {args.scenario}"
        + (f", unseen normal regime = {args.regime}" if args.scenario == "new-regime" else "")
        + f"), {args.window}-step windows stride {args.stride}; test slice "
        f"{first['n_test_slice']} windows ({first['n_test_faults']} faults); "
        f"{args.n_fp} FP + {args.n_fn} FN labels; mean ± sd over {args.seeds} seed(s); "
        f"{args.threads} thread(s), {total:.0f} s wall"
    )
    for anomaly, res in results.items():
        print(f"\n### fault = {anomaly}\n")
        print(res["summary"]["table"])
        print()
        print(res["summary"]["diagnostics_table"])
    print("\n### FPR at fixed recall on the test slice (seeds better/worse: feedback vs before)\n")
    print(compact_table)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
