"""Soak: a bounded mixed load on a real `vigil serve` over loopback, then the verdict.

Ingest (with re-sent batches), score (windows and stored ranges), label (ranges and feedback
on scores, with Idempotency-Key replays), retrain (by hand and triggered by labels) and reads
run from a few client threads for `--minutes` against a throw-away Postgres database, with the
training worker embedded (its own process) or as a separate `vigil worker`. It passes when:

- no response was a 5xx and no request failed at the transport level;
- every point the client sent is in the database exactly once (counted per series against the
  distinct timestamps the client sent), and every label it was answered 201 for is stored;
- the API process's RSS grew by less than 10 % from the end of the warm-up to the end.

    .venv/bin/python -m benchmarks.soak.run --minutes 10     # the recorded run
    .venv/bin/python -m benchmarks.soak.run --minutes 1      # a quick check

It writes `benchmarks/out/soak_<minutes>m.json` and prints a markdown summary. Loopback only;
every loop is bounded by the deadline, and the server is stopped (SIGTERM) at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from tests.utils.proc import free_port, stop, wait_until_up

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "benchmarks" / "out"
POSTGRES_ADMIN_URL = os.environ.get(
    "VIGIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHANNELS = ["vibration", "temperature", "current", "flow"]
WINDOW = 32
STRIDE = 16
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
BATCH = 120  # points per ingest request
SCORE_WINDOWS = 8
RSS_LIMIT = 0.10

# Weights of the operations each client thread draws from.
MIX = {
    "ingest": 30,
    "resend": 4,
    "score": 30,
    "score_range": 6,
    "label_range": 5,
    "feedback": 6,
    "replay": 2,
    "train": 1,
    "read": 16,
}


# -- processes -------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@dataclass
class Server:
    base: str
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None
    log: Path

    def api_pids(self) -> list[int]:
        """The processes that serve HTTP: `vigil serve` itself with one API process; its
        uvicorn children otherwise. The embedded training worker is not one of them."""
        return [self.api.pid]

    def worker_pids(self) -> list[int]:
        if self.worker is not None:
            return [self.worker.pid]
        return children(self.api.pid)


def start_server(url: str, key: str, *, separate_worker: bool, log_dir: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "VIGIL_DATABASE_URL": url,
            "VIGIL_BOOTSTRAP_ADMIN_KEY": key,
            "VIGIL_LOG_LEVEL": "WARNING",
            "VIGIL_LOG_FORMAT": "text",
            "VIGIL_EMBEDDED_WORKER": "false" if separate_worker else "true",
            "VIGIL_WORKER_METRICS_PORT": "0",
            "VIGIL_RETRAIN_AFTER_LABELS": "25",
            "VIGIL_TRAIN_EPOCHS": "6",
            "VIGIL_TRAIN_PATIENCE": "2",
            "VIGIL_TRAIN_MAX_WINDOWS": "1500",
            "VIGIL_MIN_TRAIN_WINDOWS": "16",
            "VIGIL_JOB_POLL_SECONDS": "0.5",
        }
    )
    log = log_dir / "serve.log"
    python = [sys.executable, "-m", "app"]
    subprocess.run([*python, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    api = subprocess.Popen(
        [*python, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=log_dir,
    )
    worker = None
    if separate_worker:
        worker = subprocess.Popen(
            [*python, "worker"],
            env=env,
            stdout=(log_dir / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, api, log, 90, path="/readyz")
    return Server(base, api, worker, log)


# -- the client's view -----------------------------------------------------------------------
@dataclass
class SeriesState:
    id: int
    next_index: int = 0
    sent: set[int] = field(default_factory=set)  # epoch seconds acknowledged by a 200
    last_batch: dict[str, Any] | None = None
    recent: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CHANNELS))))
    lock: threading.Lock = field(default_factory=threading.Lock)


def signal_values(start: int, count: int, series_id: int) -> np.ndarray:
    t = np.arange(start, start + count, dtype=np.float64)[:, None]
    phase = np.arange(len(CHANNELS))[None, :] * 0.7 + series_id
    rng = np.random.default_rng(start * 31 + series_id)
    values = np.sin(2 * np.pi * t / 60.0 + phase) + 0.05 * rng.standard_normal(t.shape)
    return np.round(values, 6)


@dataclass
class Stats:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    label_ids: set[int] = field(default_factory=set)
    score_ids: list[tuple[int, str]] = field(default_factory=list)
    replayable: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, status: int | str, seconds: float, detail: str = "") -> None:
        with self.lock:
            self.statuses[f"{op} {status}"] += 1
            self.latencies[op].append(seconds)
            if isinstance(status, str) or status >= 500:
                self.errors.append(f"{op}: {status} {detail}")
            elif status >= 400:
                self.rejections[f"{op} {status}: {detail}"] += 1


class Load:
    def __init__(self, base: str, key: str, series: list[SeriesState], seed: int) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"}
        self.series = series
        self.stats = Stats()
        self.seed = seed

    def call(
        self, client: httpx.Client, op: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.stats.record(op, type(exc).__name__, time.perf_counter() - started)
            return None
        detail = ""
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail", ""))[:100]
            except ValueError:
                detail = response.text[:100]
        self.stats.record(op, response.status_code, time.perf_counter() - started, detail)
        return response

    # Each operation; `rng` is the thread's own.
    def ingest(self, client: httpx.Client, rng: random.Random, resend: bool = False) -> None:
        state = rng.choice(self.series)
        with state.lock:  # one writer per series at a time keeps the client's books simple
            if resend and state.last_batch is not None:
                body = state.last_batch
            else:
                start = state.next_index
                values = signal_values(start, BATCH, state.id)
                body = {
                    "timestamps": [T0 + start + i for i in range(BATCH)],
                    "values": values.tolist(),
                }
                state.next_index += BATCH
                state.recent = np.concatenate([state.recent, values])[-4 * WINDOW :]
            for _attempt in range(5):  # a client retries a batch until it is acknowledged
                response = self.call(
                    client,
                    "resend" if resend else "ingest",
                    "POST",
                    f"/v1/series/{state.id}/points",
                    json=body,
                )
                if response is not None and response.status_code == 200:
                    break
                time.sleep(1)
            else:
                return
            result = response.json()
            stamps = set(body["timestamps"])
            fresh = len(stamps - state.sent)
            stored = result["updated"] + result["unchanged"]
            if (result["inserted"], stored) != (fresh, len(stamps) - fresh):
                with self.stats.lock:
                    self.stats.mismatches.append(f"series {state.id}: {result} for {fresh} new")
            state.sent |= stamps
            state.last_batch = body

    def score(self, client: httpx.Client, rng: random.Random) -> None:
        state = rng.choice(self.series)
        with state.lock:
            recent = state.recent.copy()
        if len(recent) < WINDOW + SCORE_WINDOWS:
            return
        starts = sorted(rng.sample(range(len(recent) - WINDOW), SCORE_WINDOWS))
        windows = np.stack([recent[s : s + WINDOW] for s in starts])
        if rng.random() < 0.1:
            windows[0, 5:9, 1] += 4.0  # an obvious fault now and then
        response = self.call(
            client,
            "score",
            "POST",
            "/v1/score",
            json={"series_id": state.id, "windows": windows.tolist()},
        )
        self._keep_scores(state.id, response)

    def score_range(self, client: httpx.Client, rng: random.Random) -> None:
        state = rng.choice(self.series)
        end = T0 + max(state.next_index - 1, 0)
        start = max(T0, end - 4 * WINDOW)
        response = self.call(
            client,
            "score_range",
            "POST",
            "/v1/score",
            json={"series_id": state.id, "start": start, "end": end},
        )
        self._keep_scores(state.id, response)

    def _keep_scores(self, series_id: int, response: httpx.Response | None) -> None:
        if response is not None and response.status_code == 200:
            with self.stats.lock:
                for result in response.json()["results"][:2]:
                    self.stats.score_ids.append((series_id, result["score_id"]))
                del self.stats.score_ids[:-200]

    def label_range(self, client: httpx.Client, rng: random.Random) -> None:
        state = rng.choice(self.series)
        start = T0 + rng.randrange(max(state.next_index, 1))
        body = {
            "series_id": state.id,
            "start": start,
            "end": start + rng.randrange(10, 120),
            "label": rng.choice(["normal", "bearing_wear", "anomaly"]),
            "author": "soak",
        }
        self._label(client, body, "label_range")

    def feedback(self, client: httpx.Client, rng: random.Random) -> None:
        with self.stats.lock:
            if not self.stats.score_ids:
                return
            _series_id, score_id = rng.choice(self.stats.score_ids)
        body = {"score_id": score_id, "label": rng.choice(["false_positive", "false_negative"])}
        self._label(client, body, "feedback")

    def _label(self, client: httpx.Client, body: dict[str, Any], op: str) -> None:
        key = str(uuid.uuid4())
        response = self.call(
            client, op, "POST", "/v1/labels", json=body, headers={"Idempotency-Key": key}
        )
        if response is not None and response.status_code == 201:
            label_id = response.json()["id"]
            with self.stats.lock:
                self.stats.label_ids.add(label_id)
                self.stats.replayable.append((key, body, label_id))
                del self.stats.replayable[:-100]

    def replay(self, client: httpx.Client, rng: random.Random) -> None:
        with self.stats.lock:
            if not self.stats.replayable:
                return
            key, body, label_id = rng.choice(self.stats.replayable)
        response = self.call(
            client, "replay", "POST", "/v1/labels", json=body, headers={"Idempotency-Key": key}
        )
        if response is None or response.status_code != 201:
            return
        if response.json()["id"] != label_id or not response.headers.get("idempotent-replayed"):
            with self.stats.lock:
                self.stats.mismatches.append(f"replay of {key} gave {response.text[:100]}")

    def train(self, client: httpx.Client, rng: random.Random) -> None:
        state = rng.choice(self.series)
        self.call(
            client,
            "train",
            "POST",
            f"/v1/series/{state.id}/train",
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )

    def read(self, client: httpx.Client, rng: random.Random) -> None:
        state = rng.choice(self.series)
        path = rng.choice(
            [
                f"/v1/series/{state.id}",
                f"/v1/labels?series_id={state.id}&limit=50",
                f"/v1/series/{state.id}/models",
                f"/v1/series/{state.id}/points?start={T0 + max(state.next_index - 200, 0)}",
                "/readyz",
            ]
        )
        self.call(client, "read", "GET", path)

    def run(self, thread: int, deadline: float, pace: float) -> None:
        rng = random.Random(self.seed * 1000 + thread)
        ops = list(MIX)
        weights = [MIX[op] for op in ops]
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=60) as client:
            while time.monotonic() < deadline:
                op = rng.choices(ops, weights)[0]
                if op == "resend":
                    self.ingest(client, rng, resend=True)
                else:
                    getattr(self, op)(client, rng)
                time.sleep(rng.uniform(0, 2 * pace))


# -- setup and verdict -----------------------------------------------------------------------
def create_database() -> tuple[str, str]:
    name = f"vigil_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_counts(name: str) -> dict[str, Any]:
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url) as conn:
        points = dict(conn.execute("SELECT series_id, count(*) FROM points GROUP BY 1").fetchall())
        labels = {row[0] for row in conn.execute("SELECT id FROM labels").fetchall()}
        versions = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'active') FROM model_versions"
        ).fetchone()
        jobs = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY 1").fetchall())
        scores = conn.execute("SELECT count(*) FROM scores").fetchone()[0]
    return {
        "points": points,
        "labels": labels,
        "versions": versions[0],
        "active": versions[1],
        "jobs": jobs,
        "scores": scores,
    }


def bootstrap(base: str, key: str, count: int) -> list[SeriesState]:
    """Series with an initial stretch of points and a first active model."""
    headers = {"Authorization": f"Bearer {key}"}
    states = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for index in range(count):
            body = {
                "name": f"soak-pump-{index}",
                "channels": CHANNELS,
                "window_size": WINDOW,
                "stride": STRIDE,
                "classes": {"bearing_wear": "anomaly"},
            }
            response = client.post("/v1/series", json=body)
            response.raise_for_status()
            state = SeriesState(id=response.json()["id"])
            values = signal_values(0, 1200, state.id)
            stamps = [T0 + i for i in range(1200)]
            client.post(
                f"/v1/series/{state.id}/points",
                json={"timestamps": stamps, "values": values.tolist()},
            ).raise_for_status()
            state.next_index = 1200
            state.sent = set(stamps)
            state.recent = values[-4 * WINDOW :]
            client.post(f"/v1/series/{state.id}/train").raise_for_status()
            states.append(state)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            active = [
                client.get(f"/v1/series/{s.id}/models").json()["active_version"] for s in states
            ]
            if all(v is not None for v in active):
                break
            time.sleep(1)
        else:
            raise RuntimeError("the first models never became active")
    return states


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=None, help="minutes (default: 20 %%)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.05, help="mean pause between requests, s")
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--separate-worker", action="store_true", help="`vigil worker` process")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else args.minutes * 0.2

    key = "soak-" + secrets.token_urlsafe(32)
    name, url = create_database()
    log_dir = Path(tempfile.mkdtemp(prefix="vigil-soak-"))
    started = time.monotonic()
    server = start_server(url, key, separate_worker=args.separate_worker, log_dir=log_dir)
    samples: list[tuple[float, int, int]] = []
    try:
        states = bootstrap(server.base, key, args.series)
        ready_after = time.monotonic() - started
        load = Load(server.base, key, states, args.seed)
        t0 = time.monotonic()
        deadline = t0 + args.minutes * 60
        threads = [
            threading.Thread(target=load.run, args=(i, deadline, args.pace), daemon=True)
            for i in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        while time.monotonic() < deadline:
            api = sum(rss_bytes(pid) for pid in server.api_pids())
            worker = sum(rss_bytes(pid) for pid in server.worker_pids())
            samples.append((time.monotonic() - t0, api, worker))
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - t0
        samples.append((elapsed, sum(rss_bytes(p) for p in server.api_pids()), 0))
    finally:
        api_exit = stop(server.api, timeout=60)
        worker_exit = stop(server.worker, timeout=60) if server.worker is not None else None
    counts = db_counts(name)
    if not args.keep_database:
        drop_database(name)

    stats = load.stats
    # RSS: the median of the samples in the minute after warm-up against the last minute.
    after_warmup = [api for t, api, _ in samples if warmup * 60 <= t < warmup * 60 + 60]
    at_end = [api for t, api, _ in samples if t >= elapsed - 60]
    rss_start = statistics.median(after_warmup) if after_warmup else samples[0][1]
    rss_end = statistics.median(at_end)
    growth = (rss_end - rss_start) / rss_start
    lost = {state.id: len(state.sent) - counts["points"].get(state.id, 0) for state in states}
    missing_labels = sorted(stats.label_ids - counts["labels"])
    five_xx = sum(n for k, n in stats.statuses.items() if k.split()[-1].startswith("5"))
    transport = sum(n for k, n in stats.statuses.items() if not k.split()[-1].isdigit())
    requests = sum(stats.statuses.values())
    verdict = {
        "zero_5xx": five_xx == 0 and transport == 0,
        "no_lost_rows": all(v == 0 for v in lost.values()) and not missing_labels,
        "consistent_answers": not stats.mismatches,
        "rss_growth_below_10pct": growth < RSS_LIMIT,
    }
    result = {
        "command": " ".join([".venv/bin/python -m benchmarks.soak.run", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "warmup_minutes": warmup,
        "threads": args.threads,
        "series": args.series,
        "worker": "separate" if args.separate_worker else "embedded",
        "ready_after_s": round(ready_after, 1),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "statuses": dict(sorted(stats.statuses.items())),
        "latency_ms": {
            op: {
                "p50": round(percentile(v, 0.5) * 1000, 1),
                "p99": round(percentile(v, 0.99) * 1000, 1),
                "max": round(max(v) * 1000, 1),
            }
            for op, v in sorted(stats.latencies.items())
        },
        "five_xx": five_xx,
        "transport_errors": transport,
        "errors": stats.errors[:20],
        "rejections": dict(stats.rejections.most_common(20)),
        "points_sent": {s.id: len(s.sent) for s in states},
        "points_stored": counts["points"],
        "points_lost": lost,
        "labels_acknowledged": len(stats.label_ids),
        "labels_missing": missing_labels[:20],
        "mismatches": stats.mismatches[:20],
        "model_versions": counts["versions"],
        "active_versions": counts["active"],
        "jobs": counts["jobs"],
        "scored_windows_stored": counts["scores"],
        "api_rss_mb": {
            "after_warmup": round(rss_start / 2**20, 1),
            "end": round(rss_end / 2**20, 1),
            "max": round(max(a for _, a, _ in samples) / 2**20, 1),
            "growth_pct": round(100 * growth, 2),
        },
        "worker_rss_mb_max": round(max(w for _, _, w in samples) / 2**20, 1),
        "rss_samples": [(round(t, 1), a, w) for t, a, w in samples],
        "api_exit_code": api_exit,
        "worker_exit_code": worker_exit,
        "verdict": verdict,
        "passed": all(verdict.values()),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"soak_{args.minutes:g}m.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(summary(result, out))
    if not result["passed"]:
        print(f"server log: {server.log}")
    return 0 if result["passed"] else 1


def summary(result: dict[str, Any], out: Path) -> str:
    rss = result["api_rss_mb"]
    lines = [
        f"Soak {result['minutes']:g} min ({result['threads']} client threads, "
        f"{result['series']} series, {result['worker']} worker): {result['requests']} requests, "
        f"{result['requests_per_s']} req/s",
        "",
        "| check | result |",
        "|---|---|",
        f"| 5xx / transport errors | {result['five_xx']} / {result['transport_errors']} |",
        f"| points sent / stored / lost | {sum(result['points_sent'].values())} / "
        f"{sum(result['points_stored'].values())} / {sum(result['points_lost'].values())} |",
        f"| labels acknowledged / missing | {result['labels_acknowledged']} / "
        f"{len(result['labels_missing'])} |",
        f"| API RSS after warm-up → end (max) | {rss['after_warmup']} → {rss['end']} MiB "
        f"({rss['growth_pct']:+.2f} %, max {rss['max']}) |",
        f"| model versions (active) / jobs | {result['model_versions']} "
        f"({result['active_versions']}) / {result['jobs']} |",
        f"| verdict | {'PASS' if result['passed'] else 'FAIL'} {result['verdict']} |",
        "",
        "| operation | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
        *(
            f"| {op} | {v['p50']} | {v['p99']} | {v['max']} |"
            for op, v in result["latency_ms"].items()
        ),
        "",
        f"statuses: {result['statuses']}",
        f"4xx (expected kinds): {result['rejections']}",
        f"written to {out.relative_to(REPO)}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
