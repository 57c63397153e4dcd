"""Issue 12, item 6: one big scoring request must not stall the others.

`python -m benchmarks.service.bigscore [--db sqlite] [--windows 1024] [--steps 4096]`
starts `vigil serve` (default settings, no embedded worker) on a throw-away database,
creates two series of one channel with windows of `--steps` steps, trains a model on the first
(2 optimiser steps: a model's scoring cost depends on its size, not on its training) and makes
a copy of it the active version of the second, then:

- sends one binary /v1/score request of `--windows` windows to the first series (the largest
  request the default limits allow: 1,024 windows x 4,096 steps, 16 MiB);
- meanwhile, from a second client, one-window binary requests to the second series, one
  after the other, from the moment the big one is sent until it is answered.

Reported: the big request's time, and the small requests' count and p50/p99/max time (how
long each waited behind the big one). Run with VIGIL_BENCH_APP_DIR pointing at another
checkout's code for "before". Writes `benchmarks/out/service_bigscore[_<tag>].json`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks.service.common import (
    T0,
    Server,
    active_artifact,
    database,
    install_models,
    log,
    median,
    provenance,
    serve,
    train_in_process,
    write_result,
)


def create_series(server: Server, name: str, steps: int) -> int:
    response = httpx.post(
        f"{server.base}/v1/series",
        headers=server.headers,
        json={"name": name, "channels": ["x"], "window_size": steps, "stride": steps // 4},
        timeout=30,
    )
    response.raise_for_status()
    series_id: int = response.json()["id"]
    return series_id


def score(client: httpx.Client, server: Server, series_id: int, windows: np.ndarray) -> float:
    started = time.perf_counter()
    response = client.post(
        f"{server.base}/v1/score",
        headers={
            **server.headers,
            "Content-Type": "application/octet-stream",
            "X-Vigil-Series-Id": str(series_id),
            "X-Vigil-Shape": ",".join(map(str, windows.shape)),
        },
        content=np.ascontiguousarray(windows, dtype="<f4").tobytes(),
    )
    response.raise_for_status()
    return time.perf_counter() - started


def run(kind: str, n_windows: int, steps: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    t = np.arange(steps * 24, dtype=np.float64)
    signal = np.sin(2 * np.pi * t / 200.0) + 0.05 * rng.standard_normal(len(t))
    big = rng.standard_normal((n_windows, steps, 1)).astype(np.float32) * 0.05
    big += np.sin(2 * np.pi * np.arange(steps) / 200.0)[None, :, None].astype(np.float32)
    # NOTE: no embedded worker: it would take the training job from train_in_process.
    with database(kind) as url, serve(url, embedded_worker="false") as server:
        first = create_series(server, "big", steps)
        other = create_series(server, "small", steps)
        body = {"timestamps": (T0 + np.arange(len(t))).tolist(), "values": signal[:, None].tolist()}
        httpx.post(
            f"{server.base}/v1/series/{first}/points",
            headers={**server.headers, "Content-Type": "application/json"},
            content=orjson.dumps(body),
            timeout=120,
        ).raise_for_status()
        started = time.perf_counter()
        train_in_process(url, first, steps=2)
        log(f"  trained in {time.perf_counter() - started:.1f} s")
        install_models(url, active_artifact(url, first), [other])
        with httpx.Client(timeout=600) as client:
            deadline = time.monotonic() + 60
            while True:  # the API polls for active versions
                try:
                    score(client, server, first, big[:1])
                    score(client, server, other, big[:1])
                    break
                except httpx.HTTPStatusError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            alone = [score(client, server, other, big[:1]) for _ in range(20)]
        small: list[float] = []
        done = threading.Event()

        def small_requests() -> None:
            with httpx.Client(timeout=600) as client:
                while not done.is_set():
                    small.append(score(client, server, other, big[:1]))

        poller = threading.Thread(target=small_requests)
        with httpx.Client(timeout=600) as client:
            poller.start()
            big_seconds = score(client, server, first, big)
            done.set()
            poller.join()
    out = {
        "db": kind,
        "windows": n_windows,
        "steps": steps,
        "big_request_s": round(big_seconds, 2),
        "small_alone_ms_p50": round(median(alone) * 1000, 1),
        "small_requests_during": len(small),
        "small_ms": {
            "p50": round(median(small) * 1000, 1),
            "p99": round(float(np.percentile(small, 99)) * 1000, 1),
            "max": round(max(small) * 1000, 1),
        },
    }
    log(
        f"  big request {out['big_request_s']} s; {len(small)} small requests meanwhile: p50 "
        f"{out['small_ms']['p50']} p99 {out['small_ms']['p99']} max {out['small_ms']['max']} "
        f"ms (alone p50 {out['small_alone_ms_p50']} ms)"
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--windows", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--tag", default="", help="suffix of the output file (before/after)")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.service.bigscore " + " ".join(argv or sys.argv[1:])
    result: dict[str, Any] = {**provenance(command), "runs": []}
    for kind in args.db.split(","):
        log(f"bigscore on {kind}: one request of {args.windows} x {args.steps} steps")
        result["runs"].append(run(kind, args.windows, args.steps))
    path = write_result("bigscore" + (f"_{args.tag}" if args.tag else ""), result)
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
