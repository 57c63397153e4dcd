"""Cost on this machine: training time per epoch and scoring throughput (issue 2).

Windows are synthetic, 128 steps x 6 channels (the preprint's Table 15 input shape): per channel
a sine with a random period (8-64 steps), phase and amplitude plus Gaussian noise, seeded. The
cost of the recurrent model does not depend on the values, only on the shapes.

- Training: the default recurrent SS model (Table 15 sizes), `--train-windows` unlabelled windows,
  batch 64 (the default), no validation split; per-epoch wall time from the progress callback,
  median (and range) over epochs 2..E (epoch 1 also pays for allocation warm-up). Also per
  optimiser step.
- Scoring: `TrainedModel.score` (everything the service computes: raw score, calibration,
  contributions, class probabilities, adjustment) at batch 1 (one call per window, as a single
  live window is scored) and batch 256 (one call), L = 1 and L = 16; windows/s, median (and
  range) over `--repeats` repeats after one warm-up call.
Each measurement is taken with torch.set_num_threads(1) and (2). The machine has 2 cores shared
with other work; the load average at the start and the end is recorded.

    .venv/bin/python -m benchmarks.models.cost             # the RESULTS.md figures
    .venv/bin/python -m benchmarks.models.cost --quick     # smoke test, < 60 s
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np

import models
from benchmarks.models.common import environment, markdown_table, write_json

T, F = 128, 6


def synthetic_windows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T)[None, :, None]
    period = rng.uniform(8, 64, size=(n, 1, F))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, F))
    amp = rng.uniform(0.5, 2.0, size=(n, 1, F))
    return amp * np.sin(2 * np.pi * t / period + phase) + 0.1 * rng.standard_normal((n, T, F))


def time_training(n_windows: int, epochs: int, threads: int) -> dict[str, Any]:
    models.set_threads(threads)
    x = synthetic_windows(n_windows, seed=1)
    stamps: list[float] = []
    tc = models.TrainConfig(epochs=epochs, val_fraction=0.0, seed=0, threads=threads)
    start = time.perf_counter()
    model = models.fit(
        models.TrainingData(x),
        classes=models.BUILTIN_CLASSES,
        channels=[f"c{i}" for i in range(F)],
        train_config=tc,
        progress=lambda p: stamps.append(time.perf_counter()),
    )
    per_epoch = np.diff([start, *stamps])
    steady = per_epoch[1:] if per_epoch.size > 1 else per_epoch
    steps = -(-n_windows // tc.batch_size)
    median = float(np.median(steady))
    return {
        "threads": threads,
        "n_windows": n_windows,
        "batch_size": tc.batch_size,
        "steps_per_epoch": steps,
        "epoch_seconds": per_epoch.tolist(),
        "median_epoch_seconds": median,
        "median_step_ms": 1000 * median / steps,
        "fit_seconds_total": model.metrics["train_seconds"],
    }


def time_scoring(
    model: models.TrainedModel, batch: int, n_samples: int, repeats: int, threads: int
) -> dict[str, Any]:
    models.set_threads(threads)
    x = synthetic_windows(max(batch, 64), seed=2)
    if batch == 1:
        n_calls = 32

        def once() -> float:
            t0 = time.perf_counter()
            for i in range(n_calls):
                model.score(x[i : i + 1], n_samples=n_samples, seed=0)
            return n_calls / (time.perf_counter() - t0)
    else:

        def once() -> float:
            t0 = time.perf_counter()
            model.score(x[:batch], n_samples=n_samples, seed=0)
            return batch / (time.perf_counter() - t0)

    once()  # warm-up
    rates = [once() for _ in range(repeats)]
    return {
        "threads": threads,
        "batch": batch,
        "n_samples": n_samples,
        "windows_per_second": rates,
        "median_windows_per_second": statistics.median(rates),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-windows", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--out", default="cost")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_windows, args.epochs, args.repeats = 128, 2, 2
        args.out += "_quick"
    load_start = os.getloadavg()
    started = time.perf_counter()

    training = []
    for threads in args.threads:
        res = time_training(args.train_windows, args.epochs, threads)
        training.append(res)
        print(
            f"train, {threads} thread(s): {res['median_epoch_seconds']:.2f} s/epoch "
            f"({res['median_step_ms']:.0f} ms/step)",
            flush=True,
        )

    models.set_threads(1)
    model = models.fit(
        models.TrainingData(synthetic_windows(128, seed=3)),
        classes=models.BUILTIN_CLASSES,
        channels=[f"c{i}" for i in range(F)],
        train_config=models.TrainConfig(epochs=2, val_fraction=0.0, seed=0),
    )
    scoring = []
    for threads in args.threads:
        for batch in (1, 256):
            for n_samples in (1, 16):
                res = time_scoring(model, batch, n_samples, args.repeats, threads)
                scoring.append(res)
                print(
                    f"score, {threads} thread(s), batch {batch}, L={n_samples}: "
                    f"{res['median_windows_per_second']:.0f} windows/s",
                    flush=True,
                )
    load_end = os.getloadavg()

    train_table = markdown_table(
        ["torch threads", "windows", "steps/epoch", "s/epoch (median)", "range", "ms/step"],
        [
            [
                str(r["threads"]),
                str(r["n_windows"]),
                str(r["steps_per_epoch"]),
                f"{r['median_epoch_seconds']:.2f}",
                f"{min(r['epoch_seconds'][1:]):.2f}-{max(r['epoch_seconds'][1:]):.2f}",
                f"{r['median_step_ms']:.0f}",
            ]
            for r in training
        ],
    )
    score_table = markdown_table(
        ["torch threads", "batch", "L", "windows/s (median)", "range", "ms/window"],
        [
            [
                str(r["threads"]),
                str(r["batch"]),
                str(r["n_samples"]),
                f"{r['median_windows_per_second']:.0f}",
                f"{min(r['windows_per_second']):.0f}-{max(r['windows_per_second']):.0f}",
                f"{1000 / r['median_windows_per_second']:.2f}",
            ]
            for r in scoring
        ],
    )
    total = time.perf_counter() - started
    payload = {
        "benchmark": "cost",
        "args": vars(args),
        "env": environment(args.threads[0]) | {"torch_threads": args.threads},
        "load_average_start": load_start,
        "load_average_end": load_end,
        "cpu_count": os.cpu_count(),
        "wall_seconds": round(total, 1),
        "training": training,
        "scoring": scoring,
        "train_table": train_table,
        "score_table": score_table,
    }
    path = write_json(args.out, payload)
    print(
        f"\nCost: recurrent SS (Table 15 sizes), synthetic windows {T} x {F}; "
        f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; {total:.0f} s wall\n"
    )
    print(train_table)
    print()
    print(score_table)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
