"""Issue 4, target 6: the API's memory with 100 series that each have an active model, and
the bounded model cache that reloads on a miss.

`python -m benchmarks.service.memory [--series 100]` creates the series on a throw-away
SQLite database, trains one model of the default size and makes a copy of its artifact the
active version of every series (a model's memory does not depend on its weights' values),
then, for `VIGIL_MODEL_CACHE_SIZE` = 128 (every model fits) and the default 64:

- scores one window of every series, twice in a row, one request at a time: each request
  of the first pass loads a model; in the second pass, with cache 128 every request is a
  hit, with cache 64 cycling through 100 series every request misses and reloads (the worst
  case of an LRU cache);
- then scores all series at concurrency 8 for a while;
- and reads the RSS of the API process and its scoring child, summed (VmRSS, and the
  high-water mark VmHWM) at each step.

Target: RSS <= 1.5 GiB. Writes `benchmarks/out/service_memory.json`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.service.common import (
    Load,
    Server,
    active_artifact,
    create_series,
    database,
    install_models,
    log,
    median,
    provenance,
    rss_bytes,
    run_load,
    score_json_body,
    score_requests,
    serve,
    trained_series,
    window_batch,
    write_result,
)

GIB = 2**30


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def one_pass(server: Server, series_ids: list[int]) -> list[float]:
    window = window_batch(1)
    times = []
    with httpx.Client(timeout=60) as client:
        for series_id in series_ids:
            started = time.perf_counter()
            response = client.post(
                f"{server.base}/v1/score",
                headers={**server.headers, "Content-Type": "application/json"},
                content=score_json_body(series_id, window),
            )
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return times


def run(n_series: int, cache_size: int, seconds: float) -> dict[str, Any]:
    with database("sqlite") as url, serve(url, model_cache_size=str(cache_size)) as server:
        first = trained_series(server, url, name="series-0")
        artifact = active_artifact(url, first)
        others = [create_series(server, f"series-{k}") for k in range(1, n_series)]
        install_models(url, artifact, others)
        series_ids = [first, *others]
        time.sleep(3)  # the registry's poll sees the new active versions

        def rss() -> int:  # the API process and its scoring child
            return sum(rss_bytes(p) for p in server.serving_pids())

        at_start = rss()
        first_pass = one_pass(server, series_ids)
        after_first = rss()
        second_pass = one_pass(server, series_ids)
        after_second = rss()
        requests = [
            r
            for s in series_ids
            for r in score_requests(server, s, windows=1, wire="json", variants=1)
        ]
        load = run_load(server, requests, Load(8, seconds))
        after_load = rss()
        peak = sum(vm(p, "VmHWM") for p in server.serving_pids())
        scorer_rss = sum(rss_bytes(p) for p in server.scorer_pids())
    out = {
        "series": n_series,
        "model_cache_size": cache_size,
        "artifact_bytes": len(artifact),
        "rss_at_start_mib": round(at_start / 2**20, 1),
        "rss_after_loading_all_mib": round(after_first / 2**20, 1),
        "rss_after_second_pass_mib": round(after_second / 2**20, 1),
        "rss_after_load_mib": round(after_load / 2**20, 1),
        "rss_peak_mib": round(peak / 2**20, 1),
        "scorer_rss_mib": round(scorer_rss / 2**20, 1),
        "first_pass_ms": {
            "p50": round(median(first_pass), 2),
            "p99": round(float(np.percentile(first_pass, 99)), 2),
        },
        "second_pass_ms": {
            "p50": round(median(second_pass), 2),
            "p99": round(float(np.percentile(second_pass, 99)), 2),
        },
        "load_c8_all_series": {k: load[k] for k in ("requests_per_s", "p50_ms", "p99_ms")},
        "met": peak <= 1.5 * GIB,
    }
    log(
        f"  cache {cache_size}: RSS start {out['rss_at_start_mib']} MiB, all loaded "
        f"{out['rss_after_loading_all_mib']} MiB, peak {out['rss_peak_mib']} MiB; first pass "
        f"p50 {out['first_pass_ms']['p50']} ms, second pass p50 {out['second_pass_ms']['p50']} ms"
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 s of load instead of 10")
    parser.add_argument("--series", type=int, default=100)
    args = parser.parse_args(argv)
    command = "python -m benchmarks.service.memory " + " ".join(argv or sys.argv[1:])
    result: dict[str, Any] = {**provenance(command), "runs": []}
    log(f"memory: {args.series} series with an active model")
    for cache_size in (128, 64):
        result["runs"].append(run(args.series, cache_size, 4.0 if args.quick else 10.0))
    path = write_result("memory", result)
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
