"""Issue 12, item 10: what an idle API costs, at 30 and at 3,000 series.

`python -m benchmarks.service.idle [--db sqlite,postgres] [--series 30,3000] [--seconds 30]`
starts `vigil serve` on a throw-away database, sends one series points through the API and
trains it, then writes the other series directly in the database, each with 200 points and
the detector state a detector pass leaves, a tenth of them (at most 300) with an active model
(a copy of the trained artifact: a model's cost at rest does not depend on its weights),
waits until the detector has nothing left to do, then, with no request arriving:

- the CPU share of the API process and its scoring child over `--seconds` (from /proc),
  the embedded training worker's apart, and on PostgreSQL the share of the server
  processes (backends) that serve this database: an idle query's cost is paid there;
- then `/metrics` scraped one at a time, `--scrapes` times: latency p50/p99, body size.

The ratio 3000/30 of each figure is the target: idle cost must not grow with the number of
series, and `/metrics` stays under 50 ms at 3,000 series. Writes
`benchmarks/out/service_idle.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

import httpx
import numpy as np
import psycopg

from benchmarks.service.common import (
    CHANNELS,
    STRIDE,
    T0,
    WINDOW,
    active_artifact,
    cpu_seconds,
    create_series,
    database,
    ingest,
    install_models,
    log,
    median,
    points_json,
    provenance,
    psycopg_url,
    sensor_values,
    serve,
    train_in_process,
    write_result,
)

MODEL_SHARE = 10
"""One series in MODEL_SHARE gets an active model, at most MAX_MODELS."""
MAX_MODELS = 300
POINTS = 200
"""Points per series (the newest point is what /metrics reports)."""


def add_series(url: str, n_series: int, artifact: bytes, with_model: int) -> None:
    """Series `idle-1` ... with 200 points each, as after ingestion and a detector pass (an
    unmarked detect_state row), the first `with_model - 1` with a copy of `artifact` active.

    Written directly, not through the API: 3,000 series through ingestion and the detector
    take many minutes on a loaded machine, and the steady state is the same."""
    from sqlalchemy import insert

    from app.db.models import DetectState, Point, Series
    from app.db.session import make_engine, make_sessionmaker, transaction

    engine = make_engine(url, role="bench")
    values = sensor_values(POINTS).astype("<f8")
    stamps = [(T0 + 10_000 + k) * 1_000_000 for k in range(POINTS)]
    ids: list[int] = []
    with transaction(make_sessionmaker(engine)) as session:
        for k in range(1, n_series):
            series = Series(
                name=f"idle-{k}",
                channels=CHANNELS,
                window_size=WINDOW,
                stride=STRIDE,
                classes={"normal": "normal", "anomaly": "anomaly"},
            )
            session.add(series)
            session.flush()
            session.execute(
                insert(Point),
                [
                    {"series_id": series.id, "ts": ts, "values": row.tobytes()}
                    for ts, row in zip(stamps, values, strict=True)
                ],
            )
            session.add(DetectState(series_id=series.id))
            ids.append(series.id)
    engine.dispose()
    install_models(url, artifact, ids[: max(with_model - 1, 0)])


def detector_idle(url: str) -> bool:
    from sqlalchemy import func, or_, select

    from app.db.models import DetectState
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(url, role="bench")
    try:
        with make_sessionmaker(engine)() as session:
            busy = session.scalar(
                select(func.count()).where(
                    or_(DetectState.dirty_from.is_not(None), DetectState.claimed_from.is_not(None))
                )
            )
    finally:
        engine.dispose()
    return not busy


def backend_pids(url: str) -> list[int]:
    """The PostgreSQL server processes connected to this database (same machine)."""
    if not url.startswith("postgresql"):
        return []
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(psycopg_url(url)) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def populate(server: Any, url: str, n_series: int) -> int:
    """One series through the API (ingested, trained, detected) and the others written
    directly; returns how many have an active model."""
    with_model = min(MAX_MODELS, max(1, n_series // MODEL_SHARE))
    first = create_series(server, "idle-0")
    ingest(server, first, points_json(4_000))
    train_in_process(url, first)
    add_series(url, n_series, active_artifact(url, first), with_model)
    deadline = time.monotonic() + 600
    while not detector_idle(url) and time.monotonic() < deadline:
        time.sleep(1)
    return with_model


def measure(db: str, n_series: int, seconds: float, scrapes: int) -> dict[str, Any]:
    with database(db) as url, serve(url) as server:
        started = time.monotonic()
        with_model = populate(server, url, n_series)
        log(f"  {db} {n_series} series ready in {time.monotonic() - started:.0f} s")
        time.sleep(5)  # the last detector pass and score-log flush settle
        groups = {
            "api": server.serving_pids(),
            "training_worker": server.training_worker_pids(),
            "database": backend_pids(url),
        }
        before = {k: cpu_of(v) for k, v in groups.items()}
        wall = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - wall
        shares = {k: (cpu_of(v) - before[k]) / elapsed for k, v in groups.items()}
        share = shares["api"]
        times, sizes = [], []
        with httpx.Client(timeout=60) as client:
            client.get(f"{server.base}/metrics").raise_for_status()  # first scrape: warm-up
            for _ in range(scrapes):
                begun = time.perf_counter()
                response = client.get(f"{server.base}/metrics")
                times.append((time.perf_counter() - begun) * 1000)
                response.raise_for_status()
                sizes.append(len(response.content))
                time.sleep(0.05)
    out = {
        "db": db,
        "series": n_series,
        "series_with_active_model": with_model,
        "idle_cpu_share_of_one_core": round(share, 4),
        "idle_cpu_share_training_worker": round(shares["training_worker"], 4),
        "idle_cpu_share_database_backends": round(shares["database"], 4),
        "metrics_ms": {
            "p50": round(median(times), 2),
            "p99": round(float(np.percentile(times, 99)), 2),
        },
        "metrics_bytes": int(median(sizes)),
    }
    log(
        f"  {db} {n_series} series: idle CPU {share:.1%} of a core (worker "
        f"{shares['training_worker']:.1%}, database {shares['database']:.1%}), /metrics p50 "
        f"{out['metrics_ms']['p50']} ms p99 {out['metrics_ms']['p99']} ms, "
        f"{out['metrics_bytes']} bytes"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--series", default="30,3000")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()
    counts = [int(n) for n in args.series.split(",")]
    result: dict[str, Any] = {
        **provenance("python -m benchmarks.service.idle " + " ".join(sys.argv[1:])),
        "runs": [],
        "ratios": {},
    }
    for db in args.db.split(","):
        runs = [measure(db, n, args.seconds, args.scrapes) for n in counts]
        result["runs"] += runs
        if len(runs) >= 2:
            low, high = runs[0], runs[-1]
            result["ratios"][f"{db} {high['series']}/{low['series']}"] = {
                "idle_cpu": round(
                    high["idle_cpu_share_of_one_core"]
                    / max(low["idle_cpu_share_of_one_core"], 1e-4),
                    2,
                ),
                "metrics_p50": round(high["metrics_ms"]["p50"] / low["metrics_ms"]["p50"], 2),
                "metrics_bytes": round(high["metrics_bytes"] / low["metrics_bytes"], 2),
            }
    path = write_result("idle", result)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
