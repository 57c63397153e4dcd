"""Issue 12, item 7: big ingestion bodies, the API's memory and a responsive /healthz.

`python -m benchmarks.service.bigbodies [--db sqlite,postgres] [--rows 200000] [--channels 64]`
starts `vigil serve` (default settings) on a throw-away database, creates 8 series of
`--channels` channels, and for JSON, then CSV:

- builds one body of `--rows` rows (the default is the largest VIGIL_MAX_POINTS_ROWS allows;
  one decimal per value, about 51 MiB of JSON), epoch-second timestamps;
- sends it to 4 series at once (4 concurrent maximum-size bodies, each an append);
- meanwhile polls `GET /healthz` every 20 ms (one at a time; a slow answer delays the next)
  and samples the API process's RSS (VmRSS) every 10 ms.

Reported per format: the body's size, the API's peak RSS growth over its RSS just before
(and that growth divided by the body size: with VIGIL_BULK_CONCURRENCY=2, two bodies are in
progress at once; a body over 256 KiB waits for its turn in a temp file, not in memory),
/healthz p50/p99/max, every body's status and time. Run with
VIGIL_BENCH_APP_DIR pointing at another checkout's code for "before". Writes
`benchmarks/out/service_bigbodies[_<tag>].json`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks.service.common import (
    T0,
    Server,
    database,
    log,
    median,
    provenance,
    rss_bytes,
    serve,
    write_result,
)

MIB = 2**20
CONCURRENT = 4
HEALTH_EVERY = 0.020
RSS_EVERY = 0.010


def values(rows: int, channels: int) -> np.ndarray:
    """(rows, channels) values with one decimal in [0, 10): about 4 bytes of text each."""
    rng = np.random.default_rng(0)
    out: np.ndarray = rng.integers(0, 100, size=(rows, channels)) / 10.0
    return out


def json_body(matrix: np.ndarray, start: int) -> bytes:
    """{"timestamps": [...], "values": [[...], ...]}, built a block of rows at a time."""
    stamps = orjson.dumps(list(range(T0 + start, T0 + start + len(matrix))))
    blocks = [
        orjson.dumps(matrix[i : i + 2000].tolist())[1:-1] for i in range(0, len(matrix), 2000)
    ]
    return b'{"timestamps":' + stamps + b',"values":[' + b",".join(blocks) + b"]}"


def csv_body(matrix: np.ndarray, start: int) -> bytes:
    header = ",".join(["timestamp", *(f"ch{k}" for k in range(matrix.shape[1]))])
    lines = [header.encode()]
    for i in range(0, len(matrix), 2000):
        for offset, row in enumerate(matrix[i : i + 2000].tolist()):
            lines.append(b"%d," % (T0 + start + i + offset) + orjson.dumps(row)[1:-1])
    return b"\n".join(lines) + b"\n"


def create_series(server: Server, name: str, channels: int) -> int:
    response = httpx.post(
        f"{server.base}/v1/series",
        headers=server.headers,
        json={
            "name": name,
            "channels": [f"ch{k}" for k in range(channels)],
            "window_size": 128,
            "stride": 64,
        },
        timeout=30,
    )
    response.raise_for_status()
    series_id: int = response.json()["id"]
    return series_id


class Watch:
    """/healthz latencies and the API process's RSS, sampled on two threads until stopped."""

    def __init__(self, server: Server, pid: int) -> None:
        self.server, self.pid = server, pid
        self.health_ms: list[float] = []
        self.health_errors = 0
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll_health, daemon=True),
            threading.Thread(target=self._sample_rss, daemon=True),
        ]

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _poll_health(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.server.base}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - started
                self.health_ms.append(took * 1000)
                self.health_errors += not ok
                self._stop.wait(max(0.0, HEALTH_EVERY - took))

    def _sample_rss(self) -> None:
        while not self._stop.is_set():
            self.rss.append(rss_bytes(self.pid))
            self._stop.wait(RSS_EVERY)


def send(server: Server, series_id: int, body: bytes, content_type: str) -> dict[str, Any]:
    started = time.perf_counter()
    response = httpx.post(
        f"{server.base}/v1/series/{series_id}/points",
        headers={**server.headers, "Content-Type": content_type},
        content=body,
        timeout=600,
    )
    return {
        "status": response.status_code,
        "seconds": round(time.perf_counter() - started, 2),
        "retry_after": response.headers.get("retry-after"),
        "answer": response.json() if response.status_code != 200 else None,
    }


def one_format(
    server: Server, series_ids: list[int], body: bytes, content_type: str
) -> dict[str, Any]:
    pid = server.api_pids()[0]
    time.sleep(2)  # let the previous phase's memory settle
    before = rss_bytes(pid)
    with Watch(server, pid) as watch, ThreadPoolExecutor(CONCURRENT) as pool:
        time.sleep(0.5)  # a few quiet /healthz samples first
        answers = list(pool.map(lambda s: send(server, s, body, content_type), series_ids))
        time.sleep(0.5)
    growth = max(watch.rss) - before
    health = watch.health_ms
    out = {
        "content_type": content_type,
        "body_mib": round(len(body) / MIB, 1),
        "rss_before_mib": round(before / MIB, 1),
        "rss_peak_mib": round(max(watch.rss) / MIB, 1),
        "rss_growth_mib": round(growth / MIB, 1),
        "growth_per_body_size": round(growth / len(body), 2),
        "healthz_polls": len(health),
        "healthz_errors": watch.health_errors,
        "healthz_ms": {
            "p50": round(median(health), 1),
            "p99": round(float(np.percentile(health, 99)), 1),
            "max": round(max(health), 1),
        },
        "bodies": answers,
    }
    log(
        f"  {content_type}: {out['body_mib']} MiB x {CONCURRENT}: RSS +{out['rss_growth_mib']} "
        f"MiB ({out['growth_per_body_size']}x a body), /healthz p50 {out['healthz_ms']['p50']} "
        f"p99 {out['healthz_ms']['p99']} max {out['healthz_ms']['max']} ms; "
        f"answers {[a['status'] for a in answers]} in {[a['seconds'] for a in answers]} s"
    )
    return out


def run(kind: str, rows: int, channels: int) -> dict[str, Any]:
    matrix = values(rows, channels)
    with database(kind) as url, serve(url) as server:
        series = [create_series(server, f"big-{k}", channels) for k in range(2 * CONCURRENT)]
        result: dict[str, Any] = {"db": kind, "rows": rows, "channels": channels}
        body = json_body(matrix, 0)
        result["json"] = one_format(server, series[:CONCURRENT], body, "application/json")
        del body
        body = csv_body(matrix, 0)
        result["csv"] = one_format(server, series[CONCURRENT:], body, "text/csv")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--tag", default="", help="suffix of the output file (before/after)")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.service.bigbodies " + " ".join(argv or sys.argv[1:])
    result: dict[str, Any] = {**provenance(command), "runs": []}
    for kind in args.db.split(","):
        log(f"bigbodies on {kind}: {CONCURRENT} concurrent bodies of {args.rows} x {args.channels}")
        result["runs"].append(run(kind, args.rows, args.channels))
    path = write_result("bigbodies" + (f"_{args.tag}" if args.tag else ""), result)
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
