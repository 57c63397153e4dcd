"""Issue 4, target 5: ingest and score cost per point as a series grows, and the memory of
building training windows.

`python -m benchmarks.service.growth [--quick]` starts `vigil serve` on a throw-away
Postgres database, trains a series, then grows it with raw COPY to 10^4, 10^5, 10^6 and
10^7 stored points (`--quick`: up to 10^6). At each size, through the API:

- append: 10,000 new rows after the newest (the COPY fast path), rows/s;
- overwrite: 10,000 existing rows in the middle of the series (temp table + ON CONFLICT), rows/s;
- range score: POST /v1/score with start/end spanning 64 stored windows in the middle, ms;

and the plans (EXPLAIN ANALYZE, BUFFERS) of the queries these run, which should use the
(series_id, ts) primary key and touch a number of pages that does not grow with the series.

Then, on the same series, `build_dataset` (what a training job runs first) for 10^4 to 10^6
points, each in a fresh process: tracemalloc peak and RSS high-water mark above the
process's baseline. Writes `benchmarks/out/service_growth.json`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psycopg

from benchmarks.service.common import (
    PYTHON,
    REPO,
    STRIDE,
    T0,
    WINDOW,
    Server,
    create_series,
    database,
    ingest,
    log,
    median,
    points_json,
    provenance,
    psycopg_url,
    sensor_values,
    serve,
    train_in_process,
    wait_for_model,
    write_result,
)
from benchmarks.service.ingest import copy_payload

BATCH = 10_000
SEED_POINTS = 8_000
RANGE_WINDOWS = 64


def fill(url: str, series_id: int, have: int, want: int) -> None:
    """COPY points [have, want) (one a second from T0), a million at a time, then ANALYZE."""
    with psycopg.connect(psycopg_url(url)) as conn:
        for start in range(have, want, 1_000_000):
            stop = min(want, start + 1_000_000)
            ts = (T0 + np.arange(start, stop, dtype=np.int64)) * 1_000_000
            values = sensor_values(stop - start, offset=start)
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    'COPY points (series_id, ts, "values") FROM STDIN (FORMAT BINARY)'
                ) as copy,
            ):
                copy.write(copy_payload(series_id, ts, values))
            conn.commit()
        conn.execute("ANALYZE points")
        conn.commit()


def explain(url: str, series_id: int, size: int) -> dict[str, str]:
    mid_s = T0 + size // 2
    span = RANGE_WINDOWS * STRIDE + WINDOW
    queries = {
        "append_span_check": (
            "SELECT EXISTS (SELECT 1 FROM points WHERE series_id = %s AND ts BETWEEN %s AND %s)",
            (series_id, (T0 + size + 10**6) * 10**6, (T0 + size + 10**6 + BATCH) * 10**6),
        ),
        "range_score_read": (
            'SELECT ts, "values" FROM points WHERE series_id = %s AND ts >= %s AND ts <= %s '
            "ORDER BY ts LIMIT %s",
            (series_id, mid_s * 10**6, (mid_s + span) * 10**6, 1024 * STRIDE + WINDOW),
        ),
        "newest_point_gauge": (
            "SELECT max(ts) FROM points WHERE series_id = %s",
            (series_id,),
        ),
    }
    plans = {}
    with psycopg.connect(psycopg_url(url)) as conn:
        for name, (sql, params) in queries.items():
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", params).fetchall()
            plans[name] = "\n".join(r[0] for r in rows)
    return plans


def post_points(server: Server, series_id: int, body: bytes) -> float:
    with httpx.Client(timeout=300) as client:
        started = time.perf_counter()
        response = client.post(
            f"{server.base}/v1/series/{series_id}/points",
            headers={**server.headers, "Content-Type": "application/json"},
            content=body,
        )
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def range_score(server: Server, series_id: int, size: int) -> float:
    mid_s = T0 + size // 2
    span = (RANGE_WINDOWS - 1) * STRIDE + WINDOW - 1
    body = orjson.dumps({"series_id": series_id, "start": mid_s, "end": mid_s + span})
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        response = client.post(
            f"{server.base}/v1/score",
            headers={**server.headers, "Content-Type": "application/json"},
            content=body,
        )
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    assert len(response.json()["results"]) == RANGE_WINDOWS
    return elapsed


def measure_size(server: Server, url: str, series_id: int, size: int, end: int) -> Any:
    appends, overwrites, scores = [], [], []
    middle = max(0, min(size - BATCH, size // 2 - BATCH // 2))  # stored rows, overwritten
    for k in range(3):
        appends.append(post_points(server, series_id, points_json(BATCH, start=end)))
        end += BATCH
        overwrites.append(
            post_points(server, series_id, points_json(BATCH, start=middle, seed=k + 1))
        )
    range_score(server, series_id, size)  # warm
    for _ in range(5):
        scores.append(range_score(server, series_id, size))
    row = {
        "stored_points": size,
        "append_rows_per_s": round(BATCH / median(appends)),
        "overwrite_rows_per_s": round(BATCH / median(overwrites)),
        "append_us_per_point": round(median(appends) / BATCH * 1e6, 2),
        "overwrite_us_per_point": round(median(overwrites) / BATCH * 1e6, 2),
        "range_score_ms": round(median(scores) * 1000, 2),
        "range_score_us_per_window": round(median(scores) / RANGE_WINDOWS * 1e6, 1),
        "plans": explain(url, series_id, size),
    }
    log(
        f"  {size:>10,} points: append {row['append_rows_per_s']:,} rows/s, overwrite "
        f"{row['overwrite_rows_per_s']:,} rows/s, range score {row['range_score_ms']} ms"
    )
    return row, end


def windows_memory(url: str, series_id: int, points: int) -> dict[str, Any]:
    out: dict[str, Any] = {"points": points}
    for mode in ("tracemalloc", "rss"):
        done = subprocess.run(
            [
                PYTHON,
                "-m",
                "benchmarks.service.growth",
                "--inner-memory",
                mode,
                url,
                str(series_id),
                str(points),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    out["tracemalloc_bytes_per_point"] = round(out["tracemalloc_peak_bytes"] / points, 1)
    out["rss_bytes_per_point"] = round(out["rss_peak_above_baseline_bytes"] / points, 1)
    log(
        f"  build_dataset({points:,} points): tracemalloc peak "
        f"{out['tracemalloc_peak_bytes'] / 2**20:.1f} MiB, RSS +"
        f"{out['rss_peak_above_baseline_bytes'] / 2**20:.1f} MiB"
    )
    return out


def inner_memory(mode: str, url: str, series_id: int, points: int) -> None:
    """In a fresh process: build the training dataset of the newest `points` points."""
    import tracemalloc

    from app.config import Settings
    from app.db.models import Series
    from app.db.session import make_engine, make_sessionmaker
    from app.training.pipeline import build_dataset

    windows = (points - WINDOW) // STRIDE + 1
    settings = Settings(database_url=url, train_max_windows=max(16, windows))
    sessions = make_sessionmaker(make_engine(url, role="bench"))
    with sessions() as session:
        series = session.get(Series, series_id)
        assert series is not None
        series.window_size, series.stride  # noqa: B018 - load before measuring
        baseline = _status("VmRSS")
        if mode == "tracemalloc":
            tracemalloc.start()
        dataset = build_dataset(session=session, series=series, settings=settings, previous=())
        result: dict[str, Any] = {"windows": dataset.summary["windows"]}
        if mode == "tracemalloc":
            result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        else:
            result["rss_peak_above_baseline_bytes"] = _status("VmHWM") - baseline
            result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="grow to 10^6 points, not 10^7")
    parser.add_argument("--inner-memory", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner_memory:
        mode, url, series_id, points = args.inner_memory
        inner_memory(mode, url, int(series_id), int(points))
        return {}
    command = "python -m benchmarks.service.growth " + " ".join(argv or sys.argv[1:])
    sizes = [10**4, 10**5, 10**6] + ([] if args.quick else [10**7])
    result: dict[str, Any] = {**provenance(command), "batch_rows": BATCH, "sizes": []}
    log(f"growth: sizes {sizes}")
    with database("postgres") as url, serve(url) as server:
        series_id = create_series(server, "grow")
        ingest(server, series_id, points_json(SEED_POINTS))
        train_in_process(url, series_id)
        wait_for_model(server, series_id)
        have, end = SEED_POINTS, SEED_POINTS
        # Appends land beyond every size to come, so the filled ranges stay contiguous.
        end = 2 * 10**7
        memory: list[dict[str, Any]] = []
        for size in sizes:
            started = time.perf_counter()
            fill(url, series_id, have, size)
            have = size
            log(f"filled to {size:,} points in {time.perf_counter() - started:.1f} s")
            row, end = measure_size(server, url, series_id, size, end)
            result["sizes"].append(row)
            if size == 10**6:
                for points in (10**4, 10**5, 3 * 10**5, 10**6):
                    memory.append(windows_memory(url, series_id, points))
        result["training_windows_memory"] = memory
    first, last = result["sizes"][0], result["sizes"][-1]
    result["flatness"] = {
        key: round(last[key] / first[key], 3)
        for key in ("append_us_per_point", "overwrite_us_per_point", "range_score_us_per_window")
    }
    path = write_result("growth", result)
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
