"""What Prometheus metrics cost a /v1/score request: the exact metric updates the service
makes for one request, timed in a fresh process, in single-process and multiprocess mode.

`python -m benchmarks.service.metrics_cost [--windows 1]` prints one JSON object.
Multiprocess mode (PROMETHEUS_MULTIPROC_DIR, used by `vigil serve` with an embedded worker or
several API processes) writes every update to a memory-mapped file under a lock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def per_request_us(windows: int, rounds: int) -> float:
    from app.metrics import (
        ADJUSTED_SCORE,
        ANOMALIES_FLAGGED,
        REQUEST_LATENCY,
        REQUESTS,
        SCORE_BATCH_SIZE,
        WINDOWS_SCORED,
        observe_many,
    )

    scores = np.random.default_rng(0).gamma(2.0, 0.5, windows)

    def one_request() -> None:
        # What app/middleware.py, app/api/routes/scores.py and the batcher do per request.
        SCORE_BATCH_SIZE.observe(windows)
        WINDOWS_SCORED.labels("bench").inc(windows)
        ANOMALIES_FLAGGED.labels("bench").inc(0)
        observe_many(ADJUSTED_SCORE.labels("bench"), scores)
        REQUESTS.labels("POST", "/v1/score", "200").inc()
        REQUEST_LATENCY.labels("POST", "/v1/score").observe(0.003)

    for _ in range(200):
        one_request()
    best = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            one_request()
        best.append((time.perf_counter() - started) / rounds * 1e6)
    return float(np.median(best))


def measure(windows: int) -> dict[str, float]:
    """Both modes, each in a fresh interpreter (the mode is fixed at import time)."""
    out: dict[str, float] = {}
    for mode in ("single_process", "multiprocess"):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with tempfile.TemporaryDirectory(prefix="vigil-bench-prom-") as folder:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = folder
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.service.metrics_cost",
                    "--inner",
                    "--windows",
                    str(windows),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
        out[f"{mode}_us_per_request"] = round(float(done.stdout.strip()), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(per_request_us(args.windows, 2000))
        return
    print(json.dumps({"windows": args.windows, **measure(args.windows)}))


if __name__ == "__main__":
    main()
