"""Detection on ingest (issue 14), measured through a real `vigil serve` as a client sees it.

`python -m benchmarks.detection [--quick] [--only lag,throughput,scale]`

1. lag: a few series stream 10 points (8 channels) a second each; after every POST
   /v1/series/{id}/points answers, the client polls GET /v1/series/{id}/scores every 0.1 s
   until the window ending at the batch's last point is there: p50/p99 of that time, on
   SQLite and on a throw-away Postgres database (target p99 <= VIGIL_DETECT_LAG_SECONDS, 5 s);
2. throughput: one series with an active model; batches of 1,000 points posted back to back
   with VIGIL_DETECT_ENABLED=false and =true (alternating server runs): rows/s and the ratio,
   and how long detection then needs to catch up;
3. scale: N series (each with an active model) streaming 10 Hz x 8 channels on Postgres; CPU
   seconds of the `vigil serve` process tree per ingested point (over the stream and until
   detection caught up), and the lag from each batch's response to its window's `scored_at`.

Models: series 1 is trained through POST /train with tiny budgets (VIGIL_TRAIN_MIN_STEPS=8,
MAX_STEPS=16, MEMBERS=1); the others get a copy of its active version. Model quality is not
measured. Full run ~7 min on two cores, `--quick` ~2 min. Writes
`benchmarks/out/service_detection.json` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from benchmarks.detection.common import (
    HISTORY,
    HZ,
    STEP_US,
    TRAIN_SETTINGS,
    WINDOW,
    Stream,
    batch_body,
    batch_span_us,
    percentile,
    post_points,
    prepare,
    scored_at,
    stream,
    tree_cpu_seconds,
)
from benchmarks.service.common import (
    Server,
    database,
    log,
    median,
    postgres_available,
    provenance,
    serve,
    write_result,
)

LAG_TARGET_S = 5.0


def lag(db: str, *, series: int, seconds: float) -> dict[str, Any]:
    with database(db) as url, serve(url, **TRAIN_SETTINGS) as server:
        ids = prepare(server, url, series, prefix=f"lag-{db}")
        state = Stream(ids, seconds)
        stream(server, state, poll=0.1)
    lags = [s.seen - s.committed for s in state.sent if s.seen is not None]
    result = {
        "db": db,
        "series": series,
        "seconds": seconds,
        "batches": len(state.sent),
        "post_failures": state.failures,
        "never_seen_within_30s": sum(s.seen is None for s in state.sent),
        "lag_p50_s": percentile(lags, 50),
        "lag_p99_s": percentile(lags, 99),
        "lag_max_s": percentile(lags, 100),
    }
    result["met"] = result["lag_p99_s"] <= LAG_TARGET_S and not result["never_seen_within_30s"]
    log(f"  lag {db}: {result}")
    return result


def _wait_scored(server: Server, series_id: int, last_us: int, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if last_us in scored_at(server, series_id, last_us - 60_000_000):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def throughput(db: str, *, batches: int, rows: int, rounds: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with database(db) as url:
        with serve(url, **TRAIN_SETTINGS) as server:
            (series_id,) = prepare(server, url, 1, prefix=f"tput-{db}")
            key = server.key  # a later server's bootstrap key is ignored: keys exist
        point = HISTORY
        for k in range(rounds):
            for enabled in ("false", "true"):
                with serve(url, detect_enabled=enabled, embedded_worker="false") as server:
                    server.key = key
                    time.sleep(1.0)
                    bodies = [batch_body(point + b * rows, rows, seed=7) for b in range(batches)]
                    with httpx.Client(timeout=300) as client:
                        started = time.perf_counter()
                        for body in bodies:
                            post_points(client, server, series_id, body)
                        elapsed = time.perf_counter() - started
                    last_us = batch_span_us(point, batches * rows)[1]
                    point += batches * rows
                    catch_up = (
                        _wait_scored(server, series_id, last_us, 120) if enabled == "true" else None
                    )
                run = {
                    "round": k,
                    "detect_enabled": enabled == "true",
                    "rows": batches * rows,
                    "rows_per_s": round(batches * rows / elapsed),
                    "detection_caught_up_after_s": None if catch_up is None else round(catch_up, 2),
                }
                log(f"  throughput {db}: {run}")
                runs.append(run)
    off = median([r["rows_per_s"] for r in runs if not r["detect_enabled"]])
    on = median([r["rows_per_s"] for r in runs if r["detect_enabled"]])
    catch = [r["detection_caught_up_after_s"] for r in runs if r["detect_enabled"]]
    return {
        "db": db,
        "batch_rows": rows,
        "channels": 8,
        "runs": runs,
        "off_rows_per_s": off,
        "on_rows_per_s": on,
        "on_over_off": round(on / off, 3),
        "caught_up_after_s": catch,
    }


def scale(db: str, *, sizes: list[int], seconds: float) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    with database(db) as url, serve(url, **TRAIN_SETTINGS) as server:
        ids = prepare(server, url, max(sizes), prefix=f"scale-{db}")
        state = Stream([], seconds)
        time.sleep(2.0)
        # What the idle service costs (detector and worker polling), to show it apart.
        cpu0, wall0 = tree_cpu_seconds(server.process.pid), time.monotonic()
        time.sleep(10.0)
        idle = (tree_cpu_seconds(server.process.pid) - cpu0) / (time.monotonic() - wall0)
        for n in sizes:
            state.series_ids = ids[:n]
            state.sent = []
            begin_us = {
                sid: batch_span_us(state.next_point.get(sid, HISTORY), 1)[0]
                - (WINDOW - 1) * STEP_US
                for sid in ids
            }
            cpu0, wall0 = tree_cpu_seconds(server.process.pid), time.monotonic()
            stream(server, state)
            sent_s = time.monotonic() - wall0
            # Until every batch's window is stored (at most 60 s): the cost includes detection.
            last = {s.series_id: s.last_us for s in state.sent}
            pending = dict(last)
            drain_started = time.monotonic()
            stored: dict[int, dict[int, float]] = {}
            while pending and time.monotonic() - drain_started < 60:
                for sid in list(pending):
                    stored[sid] = scored_at(server, sid, begin_us[sid])
                    if pending[sid] in stored[sid]:
                        del pending[sid]
                if pending:
                    time.sleep(0.5)
            cpu = tree_cpu_seconds(server.process.pid) - cpu0
            wall = time.monotonic() - wall0
            for sid in last:
                stored[sid] = scored_at(server, sid, begin_us[sid])
            lags = [
                stored[s.series_id][s.last_us] - s.committed
                for s in state.sent
                if s.last_us in stored.get(s.series_id, {})
            ]
            points = len(state.sent) * HZ
            row = {
                "series": n,
                "points_per_s_offered": n * HZ,
                "points": points,
                "points_per_s_sent": round(points / sent_s),
                "stream_seconds": round(sent_s, 1),
                "drain_seconds": round(wall - sent_s, 1),
                "post_failures": state.failures,
                "windows_unscored": len(state.sent) - len(lags),
                "cpu_s": round(cpu, 2),
                "cpu_share_of_2_cores": round(cpu / wall / 2, 3),
                "cpu_ms_per_point": round(1000 * cpu / max(points, 1), 3),
                "cpu_ms_per_point_above_idle": round(
                    1000 * (cpu - idle * wall) / max(points, 1), 3
                ),
                "lag_p50_s": percentile(lags, 50),
                "lag_p99_s": percentile(lags, 99),
            }
            row["kept_up"] = row["lag_p99_s"] <= LAG_TARGET_S and not row["windows_unscored"]
            log(f"  scale {db}: {row}")
            out.append(row)
            time.sleep(3.0)
    return {
        "db": db,
        "idle_cpu_share_of_2_cores": round(idle / 2, 4),
        "rows": out,
        "largest_over_smallest_cpu_per_point": round(
            out[-1]["cpu_ms_per_point"] / out[0]["cpu_ms_per_point"], 3
        ),
        "largest_over_smallest_cpu_per_point_above_idle": round(
            out[-1]["cpu_ms_per_point_above_idle"] / out[0]["cpu_ms_per_point_above_idle"], 3
        ),
    }


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="lag,throughput,scale")
    parser.add_argument("--sizes", default=None, help="series counts for scale, e.g. 10,30,100")
    args = parser.parse_args()
    if reason := postgres_available():
        log(f"warning: {reason}; the Postgres parts will fail")
    quick = args.quick
    command = " ".join(["python -m benchmarks.detection", *sys.argv[1:]])
    result: dict[str, Any] = provenance(command)
    result["train_settings"] = TRAIN_SETTINGS
    started = time.monotonic()
    parts = args.only.split(",")
    if "lag" in parts:
        log("== lag")
        result["lag"] = [
            lag(db, series=3 if quick else 5, seconds=15 if quick else 60)
            for db in ("sqlite", "postgres")
        ]
    if "throughput" in parts:
        log("== throughput")
        result["throughput"] = [
            throughput(db, batches=5 if quick else 20, rows=1000, rounds=1 if quick else 3)
            for db in ("sqlite", "postgres")
        ]
    if "scale" in parts:
        log("== scale")
        sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
        result["scale"] = scale(
            "postgres",
            sizes=sizes or ([5, 10] if quick else [10, 30, 100]),
            seconds=15 if quick else 40,
        )
    result["minutes"] = round((time.monotonic() - started) / 60, 1)
    path = write_result("detection", result)
    result = json.loads(path.read_text())
    log(f"done in {result['minutes']} min; {path}")
    print(report(result))


def report(result: dict[str, Any]) -> str:
    parts = [f"`{result['command']}`, {result['date']}, git {result['git_head']}"]
    if "lag" in result:
        parts.append(
            _table(
                [
                    "db",
                    "series x 10 Hz",
                    "batches",
                    "p50 s",
                    "p99 s",
                    "max s",
                    "unseen",
                    "p99 <= 5 s",
                ],
                [
                    [
                        r["db"],
                        r["series"],
                        r["batches"],
                        r["lag_p50_s"],
                        r["lag_p99_s"],
                        r["lag_max_s"],
                        r["never_seen_within_30s"],
                        r["met"],
                    ]
                    for r in result["lag"]
                ],
            )
        )
    if "throughput" in result:
        parts.append(
            _table(
                ["db", "off rows/s", "on rows/s", "on/off", "caught up after s"],
                [
                    [
                        r["db"],
                        r["off_rows_per_s"],
                        r["on_rows_per_s"],
                        r["on_over_off"],
                        r["caught_up_after_s"],
                    ]
                    for r in result["throughput"]
                ],
            )
        )
    if "scale" in result:
        s = result["scale"]
        parts.append(
            _table(
                [
                    "N series",
                    "points/s offered",
                    "sent",
                    "CPU ms/point",
                    "above idle",
                    "CPU share of 2 cores",
                    "lag p50 s",
                    "lag p99 s",
                    "unscored",
                    "kept up",
                ],
                [
                    [
                        r["series"],
                        r["points_per_s_offered"],
                        r.get("points_per_s_sent"),
                        r["cpu_ms_per_point"],
                        r["cpu_ms_per_point_above_idle"],
                        r["cpu_share_of_2_cores"],
                        r["lag_p50_s"],
                        r["lag_p99_s"],
                        r["windows_unscored"],
                        r["kept_up"],
                    ]
                    for r in s["rows"]
                ],
            )
            + f"\n\nCPU per point, largest N / smallest: {s['largest_over_smallest_cpu_per_point']}"
            f" (above idle: {s['largest_over_smallest_cpu_per_point_above_idle']}; idle service:"
            f" {s['idle_cpu_share_of_2_cores']} of 2 cores)"
        )
    parts.append(f"CPU steal over the run: {result.get('cpu_steal_share_over_run')}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
