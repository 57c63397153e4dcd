"""Issue 12, item 3 ("lock pile-up"): 32 writers upserting overlapping time ranges of one series
on Postgres, with a labeller and retrains alongside.

`python -m benchmarks.service.writers [--seconds 60] [--writers 32] [--rows 600] [--span 3000]`

Starts `vigil serve` (embedded training worker, detector on) on a throw-away Postgres database,
trains the series once, then for `--seconds`:

- `--writers` clients each send POST /v1/series/{id}/points in a loop, back to back, every
  batch `--rows` consecutive points at a random place within the same `--span` points, so that
  every batch overlaps many others (client timeout `--client-timeout`, 120 s as in the issue);
- a labeller labels a random range of the span every second (labels arm retrains after a 2 s
  quiet period);
- a trainer asks for a retrain every 5 s (short jobs, so that versions are stored and
  activated, each under the series' row lock, while the writers write).

Every request writes its own id into channel 0 of each of its points (the other channels are
sensor-like values), so a stored point says which request wrote it. Reported: p50/p99/max
latency of the writes, their count by status (`timeout` where the client gave up), and three
checks of what was committed:

1. **No write commits after an error answer.** A statement-level trigger on `points`
   (installed in the throw-away database before the run, not part of Vigil) records the
   request id of every row an INSERT or an ON CONFLICT UPDATE writes, in a table of its own, in
   the writing transaction: a row of that table exists if and only if the write committed. Every
   request id found there must belong to a request answered 2xx. An id of a request answered
   with an error (or whose client gave up) is a write that committed although its client was
   told it failed: counted as `committed_after_error`. This also catches a write that was
   later overwritten, which the final table alone cannot show.
2. **Every acknowledged write committed**: every 2xx request id is in that table (each request
   writes values no other request writes, so none is "unchanged").
3. **Acknowledged writes are not undone by older ones** (the issue's lost update): for each
   stored point, the request whose id it holds (S) must not be older than another acknowledged
   request B covering the same timestamp that was sent after S was answered. B began after S
   had committed, and so committed after it: S's value may not be the last one. Requests that
   overlap in time may commit in either order; only this real-time order is checked.

Writes `benchmarks/out/service_writers[_TAG].json` (`--tag`). `VIGIL_BENCH_APP_DIR` serves
another checkout (the "before" figures), as for the other service benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
import psycopg

from benchmarks.service.common import (
    T0,
    Server,
    database,
    log,
    provenance,
    psycopg_url,
    sensor_values,
    serve,
    trained_series,
    write_result,
)

TARGETS = {"p99_s": 5.0, "max_s": 30.0, "committed_after_error": 0}

# The audit trigger: one row per request id a statement wrote (channel 0's float64 bytes).
AUDIT_SQL = """
CREATE TABLE bench_writes (request_bytes bytea NOT NULL);
CREATE FUNCTION bench_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench_writes SELECT DISTINCT substring("values" from 1 for 8) FROM written;
  RETURN NULL;
END $$;
CREATE TRIGGER bench_audit_insert AFTER INSERT ON points
  REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION bench_audit();
CREATE TRIGGER bench_audit_update AFTER UPDATE ON points
  REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION bench_audit();
"""


@dataclass
class Write:
    request_id: int
    first: int
    """Offset of the first point within the span."""
    rows: int
    sent: float
    answered: float = 0.0
    status: str = ""
    detail: str = ""


def batch_body(write: Write) -> bytes:
    seconds = np.arange(T0 + write.first, T0 + write.first + write.rows, dtype=np.int64)
    values = sensor_values(write.rows, seed=write.request_id, offset=write.first)
    values[:, 0] = write.request_id  # exact in float64: ids stay far below 2**53
    return orjson.dumps({"timestamps": seconds.tolist(), "values": values.tolist()})


async def writer(
    client: httpx.AsyncClient,
    server: Server,
    series_id: int,
    number: int,
    args: argparse.Namespace,
    stop_at: float,
    writes: list[Write],
) -> None:
    rng = random.Random(number)
    sequence = 0
    url = f"{server.base}/v1/series/{series_id}/points"
    headers = {**server.headers, "Content-Type": "application/json"}
    while time.monotonic() < stop_at:
        sequence += 1
        first = rng.randrange(0, args.span - args.rows + 1)
        write = Write(number * 1_000_000 + sequence, first, args.rows, 0.0)
        body = batch_body(write)
        write.sent = time.monotonic()
        try:
            response = await client.post(url, content=body, headers=headers)
            write.status = str(response.status_code)
            if response.status_code >= 300:
                retry_after = response.headers.get("retry-after")
                write.detail = f"{response.text[:300]} (Retry-After: {retry_after})"
        except httpx.TimeoutException:
            write.status = "timeout"
        except httpx.TransportError as exc:
            write.status = type(exc).__name__
        write.answered = time.monotonic()
        writes.append(write)


async def every(
    seconds: float, stop_at: float, action: Any, outcomes: Counter[str], name: str
) -> None:
    while time.monotonic() < stop_at:
        try:
            response = await action()
            outcomes[f"{name} {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            outcomes[f"{name} {type(exc).__name__}"] += 1
        await asyncio.sleep(seconds)


async def drive(server: Server, series_id: int, args: argparse.Namespace) -> dict[str, Any]:
    writes: list[Write] = []
    others: Counter[str] = Counter()
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=args.writers + 4, max_keepalive_connections=args.writers)
    async with httpx.AsyncClient(timeout=args.client_timeout, limits=limits) as client:

        async def label() -> httpx.Response:
            first = rng.randrange(0, args.span - 60)
            return await client.post(
                f"{server.base}/v1/labels",
                headers=server.headers,
                json={
                    "series_id": series_id,
                    "start": T0 + first,
                    "end": T0 + first + 60,
                    "label": "anomaly",
                    "author": "bench",
                },
            )

        async def retrain() -> httpx.Response:
            return await client.post(
                f"{server.base}/v1/series/{series_id}/train", headers=server.headers
            )

        stop_at = time.monotonic() + args.seconds
        started = time.monotonic()
        await asyncio.gather(
            *(
                writer(client, server, series_id, n, args, stop_at, writes)
                for n in range(1, args.writers + 1)
            ),
            every(1.0, stop_at, label, others, "label"),
            every(5.0, stop_at, retrain, others, "train"),
        )
        elapsed = time.monotonic() - started
    return {"writes": writes, "others": dict(others), "elapsed_s": elapsed}


def check(url: str, series_id: int, writes: list[Write], span: int) -> dict[str, Any]:
    """The three checks of the module's docstring."""
    by_id = {w.request_id: w for w in writes}
    ok = {w.request_id for w in writes if w.status.startswith("2")}
    with psycopg.connect(psycopg_url(url)) as conn:
        committed = {
            int(np.frombuffer(bytes(row[0]), dtype="<f8")[0])
            for row in conn.execute("SELECT DISTINCT request_bytes FROM bench_writes")
        }
        stored = conn.execute(
            'SELECT ts, "values" FROM points WHERE series_id = %s AND ts >= %s AND ts < %s '
            "ORDER BY ts",
            (series_id, T0 * 1_000_000, (T0 + span) * 1_000_000),
        ).fetchall()
    written_ids = {i for i in committed if i in by_id}  # ids of this run (not the training data)
    after_error = sorted(i for i in written_ids if i not in ok)
    not_committed = sorted(ok - written_ids)
    # Check 3: per offset, the newest acknowledged request's sending time versus the stored one.
    ok_writes = sorted((by_id[i] for i in ok), key=lambda w: w.sent)
    overwritten_by_older = 0
    for ts_us, blob in stored:
        offset = ts_us // 1_000_000 - T0
        holder = by_id.get(int(np.frombuffer(bytes(blob)[:8], dtype="<f8")[0]))
        if holder is None:
            continue  # a point no request of the run covered (or the training data)
        if any(
            b.sent > holder.answered and b.first <= offset < b.first + b.rows for b in ok_writes
        ):
            overwritten_by_older += 1
    return {
        "committed_after_error": len(after_error),
        "committed_after_error_statuses": dict(Counter(by_id[i].status for i in after_error)),
        "acknowledged_not_committed": len(not_committed),
        "points_holding_an_older_write": overwritten_by_older,
        "stored_points_checked": len(stored),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with database("postgres") as url:
        # Short retrains (so that versions are stored and activated while the writers write),
        # labels arming one 2 s after the last, and only errors logged.
        with serve(
            url,
            train_steps="40",
            train_min_steps="40",
            train_patience="1000",
            train_members="1",
            retrain_quiet_seconds="2",
            log_level="ERROR",
        ) as server:
            series_id = trained_series(server, url, name="written", points=args.span + 2_000)
            with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
                conn.execute(AUDIT_SQL)
            log(f"{args.writers} writers for {args.seconds:g} s")
            driven = asyncio.run(drive(server, series_id, args))
            jobs = httpx.get(
                f"{server.base}/v1/jobs",
                params={"series_id": series_id, "limit": 1000},
                headers=server.headers,
                timeout=30,
            ).json()["jobs"]
        writes: list[Write] = driven["writes"]
        checks = check(url, series_id, writes, args.span)
    latencies = np.array([w.answered - w.sent for w in writes])
    statuses = Counter(w.status for w in writes)
    result = {
        "writes": len(writes),
        "writes_per_s": round(len(writes) / driven["elapsed_s"], 1),
        "statuses": dict(statuses),
        "p50_s": round(float(np.percentile(latencies, 50)), 3),
        "p99_s": round(float(np.percentile(latencies, 99)), 3),
        "max_s": round(float(latencies.max()), 3),
        "over_30_s": int((latencies > 30).sum()),
        "error_samples": {w.status: w.detail for w in writes if w.detail},
        "labeller_and_trainer": driven["others"],
        "jobs_by_status": dict(Counter(job["status"] for job in jobs)),
        **checks,
    }
    result["verdict"] = {
        "p99_s": {"value": result["p99_s"], "target": "< 5", "met": result["p99_s"] < 5},
        "max_s": {"value": result["max_s"], "target": "<= 30", "met": result["max_s"] <= 30},
        "committed_after_error": {
            "value": checks["committed_after_error"],
            "target": 0,
            "met": checks["committed_after_error"] == 0,
        },
        "lost_updates": {
            "value": checks["points_holding_an_older_write"] + checks["acknowledged_not_committed"],
            "target": 0,
            "met": checks["points_holding_an_older_write"] + checks["acknowledged_not_committed"]
            == 0,
        },
    }
    return result


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--rows", type=int, default=600, help="points per batch")
    parser.add_argument("--span", type=int, default=3000, help="points all batches fall within")
    parser.add_argument("--client-timeout", type=float, default=120.0)
    parser.add_argument("--tag", default="", help="suffix of the output file's name")
    args = parser.parse_args()
    meta = provenance("python -m benchmarks.service.writers " + " ".join(sys.argv[1:]))
    served = os.environ.get("VIGIL_BENCH_APP_DIR", "this checkout")
    result = {**meta, "served_code": served, "settings": vars(args), **run(args)}
    path = write_result("writers" + (f"_{args.tag}" if args.tag else ""), result)
    shown = {k: v for k, v in result.items() if k not in ("verdict",) and not k.startswith("_")}
    log(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    for name, verdict in result["verdict"].items():
        log(
            f"{name}: {verdict['value']} (target {verdict['target']}): "
            f"{'met' if verdict['met'] else 'NOT met'}"
        )
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
