"""The limit: the model's own scoring speed in a fresh process, with nothing around it.

`python -m benchmarks.service.limit MODEL.safetensors --threads 1 --batches 1,32,256`
prints one JSON object: per batch size, windows/s (median of repetitions) and the latency of
one call. It calls `TrainedModel.score` exactly as the service's micro-batcher does (eval mode,
`torch.inference_mode()`, L = 1), on healthy windows of the series' shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from models import TrainedModel


def measure(model: TrainedModel, batch: int, seconds: float, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(batch)
    windows = rng.standard_normal((batch, model.window_size, model.n_channels)).astype(np.float32)
    model.score(windows)  # warm-up
    rates: list[float] = []
    call_ms: list[float] = []
    for _ in range(repeats):
        calls = 0
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            model.score(windows)
            call_ms.append((time.perf_counter() - t0) * 1000)
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds / repeats:
                break
        rates.append(calls * batch / elapsed)
    return {
        "batch": batch,
        "windows_per_s": round(float(np.median(rates)), 1),
        "windows_per_s_runs": [round(r, 1) for r in rates],
        "call_p50_ms": round(float(np.percentile(call_ms, 50)), 3),
        "call_p99_ms": round(float(np.percentile(call_ms, 99)), 3),
        "calls": len(call_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = TrainedModel.load(args.artifact)
    results = [measure(model, int(b), args.seconds, args.repeats) for b in args.batches.split(",")]
    out = {"threads": args.threads, "model": repr(model), "results": results}
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
