"""Issue 4, target 4: scoring while a retrain runs, against scoring while none does.

`python -m benchmarks.service.retrain [--quick] [--mode worker,embedded]`

- `worker`: Postgres, `vigil serve` without an embedded worker plus a separate `vigil worker`;
- `embedded`: SQLite, `vigil serve` with its embedded training worker (the `make run` set-up).

In each mode: one series with a model is scored (one window per JSON request, concurrency 8)
for a few periods with no training, then a retrain of another series (enough windows, and an
epoch budget that outlasts the measurement) is queued, and once it is running the same load
is measured again. The training process's CPU use during that phase shows that it trained.
Target: median p99 while training <= 2x median p99 idle. Writes
`benchmarks/out/service_retrain.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

from benchmarks.service.common import (
    PYTHON,
    REPO,
    Load,
    Server,
    _clean_env,
    cpu_seconds,
    create_series,
    database,
    ingest,
    log,
    median,
    points_json,
    provenance,
    run_load,
    score_requests,
    serve,
    trained_series,
    write_result,
)
from tests.utils.proc import stop

TRAINING = {"train_steps": "10000000", "train_patience": "10000000"}
CONCURRENCY = 8


@contextlib.contextmanager
def separate_worker(url: str) -> Iterator[subprocess.Popen[bytes]]:
    env = _clean_env()
    env.update(
        {
            "VIGIL_DATABASE_URL": url,
            "VIGIL_WORKER_METRICS_PORT": "0",
            "VIGIL_LOG_LEVEL": "WARNING",
            **{f"VIGIL_{k.upper()}": v for k, v in TRAINING.items()},
        }
    )
    process = subprocess.Popen(
        [PYTHON, "-m", "app", "worker"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        stop(process, timeout=60)


def start_training(server: Server, series_id: int, timeout: float = 120.0) -> int:
    response = httpx.post(
        f"{server.base}/v1/series/{series_id}/train", headers=server.headers, timeout=30
    )
    response.raise_for_status()
    job_id: int = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_state(server, job_id)
        if job["status"] == "running" and job["progress"] > 0:
            return job_id  # at least one epoch done: it is training, not loading
        if job["status"] in ("failed", "succeeded"):
            raise RuntimeError(f"the training job ended early: {job}")
        time.sleep(0.5)
    raise RuntimeError("the training job did not start")


def job_state(server: Server, job_id: int) -> dict[str, Any]:
    response = httpx.get(f"{server.base}/v1/jobs/{job_id}", headers=server.headers, timeout=30)
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def phase(server: Server, requests: list[bytes], seconds: float, trainer: int | None) -> Any:
    cpu0 = cpu_seconds(trainer) if trainer else 0.0
    started = time.monotonic()
    result = run_load(server, requests, Load(CONCURRENCY, seconds, warmup=1.0))
    if trainer:
        result["trainer_cpu_share"] = round(
            (cpu_seconds(trainer) - cpu0) / (time.monotonic() - started), 3
        )
    return result


def run_mode(mode: str, *, seconds: float, periods: int) -> dict[str, Any]:
    db = "postgres" if mode == "worker" else "sqlite"
    settings = {"embedded_worker": "false"} if mode == "worker" else {**TRAINING}
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(database(db))
        server = stack.enter_context(serve(url, **settings))
        scored = trained_series(server, url, name="scored")
        trained = create_series(server, "retrained")
        ingest(server, trained, points_json(40_000, seed=7))
        trainer_pid: int | None = None
        if mode == "worker":
            trainer_pid = stack.enter_context(separate_worker(url)).pid
        else:
            trainer_pid = server.training_worker_pids()[0]
        requests = score_requests(server, scored, windows=1, wire="json")
        idle = []
        for k in range(periods):
            idle.append(phase(server, requests, seconds, trainer_pid))
            log(f"  {mode} idle {k + 1}: p50 {idle[-1]['p50_ms']} ms p99 {idle[-1]['p99_ms']} ms")
        job_id = start_training(server, trained)
        busy = []
        for k in range(periods):
            busy.append(phase(server, requests, seconds, trainer_pid))
            log(
                f"  {mode} training {k + 1}: p50 {busy[-1]['p50_ms']} ms "
                f"p99 {busy[-1]['p99_ms']} ms (trainer CPU {busy[-1]['trainer_cpu_share']:.0%})"
            )
        job = job_state(server, job_id)
        assert job["status"] == "running", f"training ended during the measurement: {job}"
    idle_p99 = median([r["p99_ms"] for r in idle])
    busy_p99 = median([r["p99_ms"] for r in busy])
    return {
        "database": db,
        "settings": {**settings, **({} if mode == "embedded" else TRAINING)},
        "idle": idle,
        "training": busy,
        "training_progress_at_end": job["progress"],
        "idle_p99_ms": idle_p99,
        "training_p99_ms": busy_p99,
        "ratio": round(busy_p99 / idle_p99, 3),
        "idle_p50_ms": median([r["p50_ms"] for r in idle]),
        "training_p50_ms": median([r["p50_ms"] for r in busy]),
        "met": busy_p99 <= 2 * idle_p99,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 periods of 4 s, not 3 of 8 s")
    parser.add_argument("--mode", default="worker,embedded")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.service.retrain " + " ".join(argv or sys.argv[1:])
    result: dict[str, Any] = {**provenance(command), "concurrency": CONCURRENCY}
    for mode in args.mode.split(","):
        log(f"retraining beside scoring: {mode}")
        result[mode] = run_mode(mode, seconds=4.0 if args.quick else 8.0, periods=3)
        log(f"  {mode}: p99 ratio {result[mode]['ratio']}")
    path = write_result("retrain", result)
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
