"""Issue 4, target 3: one request of 100,000 rows x 6 channels into Postgres, against a raw
psycopg 3 binary COPY of the same rows, in the same run.

`python -m benchmarks.service.ingest [--quick] [--rows 100000]` starts `vigil serve` on a
throw-away Postgres database and repeats, interleaved (median of the repetitions):

1. raw COPY: the rows (int64 µs timestamps, float64 values) as COPY BINARY into `points`
   of a fresh series, from this process, with psycopg 3 - the fastest way to write them;
2. the API, first send: POST /v1/series/{id}/points of a fresh series, JSON with epoch-second
   timestamps (the body is built before the clock starts; the time is the HTTP round trip);
3. the API, re-send of the same body: every row an update.

Also one first send each with ISO-8601 timestamps and as CSV, for the record.
Writes `benchmarks/out/service_ingest.json`.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from typing import Any

import httpx
import numpy as np
import psycopg

from benchmarks.service.common import (
    CHANNELS,
    T0,
    Server,
    create_series,
    database,
    log,
    median,
    points_json,
    provenance,
    psycopg_url,
    sensor_values,
    serve,
    write_result,
)

TARGETS = {"api_rows_per_s": 100_000.0, "api_share_of_copy": 0.5, "resend_over_first": 2.0}


def copy_payload(series_id: int, ts: np.ndarray, values: np.ndarray) -> bytes:
    """PGCOPY binary: header, then per row (series_id int4, ts int8, values bytea), trailer."""
    width = values.shape[1] * 8
    tuples = np.empty(
        len(ts),
        dtype=np.dtype(
            [
                ("n", ">i2"),
                ("l1", ">i4"),
                ("sid", ">i4"),
                ("l2", ">i4"),
                ("ts", ">i8"),
                ("l3", ">i4"),
                ("v", f"V{width}"),
            ]
        ),
    )
    tuples["n"], tuples["l1"], tuples["sid"] = 3, 4, series_id
    tuples["l2"], tuples["ts"], tuples["l3"] = 8, ts, width
    tuples["v"] = np.ascontiguousarray(values, dtype="<f8").view(f"V{width}").reshape(len(ts))
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    return header + tuples.tobytes() + struct.pack("!h", -1)


def raw_copy(url: str, series_id: int, rows: int) -> float:
    """Seconds to COPY `rows` points (building the payload included) and commit."""
    ts = (T0 + np.arange(rows, dtype=np.int64)) * 1_000_000
    values = sensor_values(rows)
    with psycopg.connect(psycopg_url(url)) as conn:
        started = time.perf_counter()
        with (
            conn.cursor() as cursor,
            cursor.copy('COPY points (series_id, ts, "values") FROM STDIN (FORMAT BINARY)') as copy,
        ):
            copy.write(copy_payload(series_id, ts, values))
        conn.commit()
        return time.perf_counter() - started


def post(server: Server, series_id: int, body: bytes, content_type: str) -> tuple[float, Any]:
    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        response = client.post(
            f"{server.base}/v1/series/{series_id}/points",
            headers={**server.headers, "Content-Type": content_type},
            content=body,
        )
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def csv_body(rows: int) -> bytes:
    values = sensor_values(rows)
    seconds = T0 + np.arange(rows, dtype=np.int64)
    lines = ["timestamp," + ",".join(CHANNELS)]
    lines += [
        f"{s}," + ",".join(f"{v:.6f}" for v in row)
        for s, row in zip(seconds.tolist(), values.tolist(), strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def run(rows: int, repeats: int) -> dict[str, Any]:
    with database("postgres") as url, serve(url) as server:
        body = points_json(rows)
        reps: list[dict[str, Any]] = []
        for k in range(repeats):
            copy_series = create_series(server, f"copy-{k}")
            api_series = create_series(server, f"api-{k}")
            copy_s = raw_copy(url, copy_series, rows)
            first_s, first = post(server, api_series, body, "application/json")
            resend_s, resend = post(server, api_series, body, "application/json")
            assert first["inserted"] == rows and resend["unchanged"] == rows, (first, resend)
            rep = {
                "copy_rows_per_s": round(rows / copy_s),
                "api_first_rows_per_s": round(rows / first_s),
                "api_resend_rows_per_s": round(rows / resend_s),
                "api_share_of_copy": round(copy_s / first_s, 3),
                "resend_over_first": round(resend_s / first_s, 3),
            }
            log(f"  repetition {k + 1}: {rep}")
            reps.append(rep)
        iso_s, _ = post(
            server, create_series(server, "iso"), points_json(rows, iso=True), "application/json"
        )
        csv_s, _ = post(server, create_series(server, "csv"), csv_body(rows), "text/csv")
    summary = {key: median([r[key] for r in reps]) for key in reps[0]}
    return {
        "rows": rows,
        "channels": len(CHANNELS),
        "json_body_bytes": len(body),
        "repetitions": reps,
        "median": summary,
        "first_send_iso_timestamps_rows_per_s": round(rows / iso_s),
        "first_send_csv_rows_per_s": round(rows / csv_s),
        "verdict": {
            "api_rows_per_s": {
                "measured": summary["api_first_rows_per_s"],
                "target": TARGETS["api_rows_per_s"],
                "met": summary["api_first_rows_per_s"] >= TARGETS["api_rows_per_s"],
            },
            "api_share_of_copy": {
                "measured": summary["api_share_of_copy"],
                "target": TARGETS["api_share_of_copy"],
                "met": summary["api_share_of_copy"] >= TARGETS["api_share_of_copy"],
            },
            "resend_over_first": {
                "measured": summary["resend_over_first"],
                "target": TARGETS["resend_over_first"],
                "met": summary["resend_over_first"] <= TARGETS["resend_over_first"],
            },
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 5")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    command = "python -m benchmarks.service.ingest " + " ".join(argv or sys.argv[1:])
    log(f"ingestion: {args.rows} rows x {len(CHANNELS)} channels into Postgres")
    result = {**provenance(command), **run(args.rows, 3 if args.quick else 5)}
    path = write_result("ingest", result)
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
