"""`vigil serve` and `vigil worker` as users run them: the embedded worker, several API
processes with their metrics merged, and the worker's own metrics endpoint."""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.security import create_key
from tests.utils.proc import VIGIL, free_port, serve, stop, vigil_env
from tests.utils.stream import make_stream

pytestmark = pytest.mark.slow


def _key(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session, session.begin():
        _, key = create_key(session=session, name="ops", scopes=["admin"])
    return {"Authorization": f"Bearer {key}"}


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_embedded_worker_trains_and_its_metrics_reach_the_api(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    headers = _key(sessions)
    env = {
        "VIGIL_EMBEDDED_WORKER": "true",
        "VIGIL_TRAIN_EPOCHS": "3",
        "VIGIL_JOB_POLL_SECONDS": "0.2",
    }
    with serve(database_url, **env) as (base, process):
        client = httpx.Client(base_url=base, headers=headers, timeout=30)
        series = client.post(
            "/v1/series",
            json={"name": "p", "channels": ["a", "b", "c"], "window_size": 16, "stride": 8},
        )
        assert series.status_code == 201, series.text
        sid = series.json()["id"]
        stream = make_stream(400)
        sent = client.post(
            f"/v1/series/{sid}/points",
            json={"timestamps": (stream.ts / 1e6).tolist(), "values": stream.values.tolist()},
        )
        assert sent.status_code == 200
        job = client.post(f"/v1/series/{sid}/train").json()
        deadline = time.monotonic() + 120
        while (state := client.get(f"/v1/jobs/{job['job_id']}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["status"] == "succeeded", state
        metrics = client.get("/metrics").text
        # Counted in the worker process, exposed by the API process.
        assert _metric(metrics, "vigil_jobs_total", status="succeeded") == 1.0
        assert _metric(metrics, "vigil_active_model_version", series="p") == 1.0
        assert _metric(metrics, "vigil_points_ingested_total", series="p") == 400.0
        children = _children(process.pid)
        assert children, "the embedded worker should run as a child process"
    # `serve` has stopped: its worker must not live on as an orphan.
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_metrics_are_merged_across_api_processes(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    headers = _key(sessions)
    with serve(database_url, VIGIL_WORKERS="2") as (base, _):
        for _ in range(40):
            # A new connection each time, so that both processes get requests.
            response = httpx.get(f"{base}/v1/series", headers={**headers, "Connection": "close"})
            assert response.status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        served = _metric(
            metrics, "vigil_http_requests_total", method="GET", route="/v1/series", status="200"
        )
        assert served == 40.0
        pids = set(re.findall(r'pid="(\d+)"', metrics))
        assert not pids  # merged: no per-process series leak into the exposition


def test_vigil_worker_serves_its_own_metrics(database_url: str) -> None:
    port = free_port()
    worker = subprocess.Popen(
        [*VIGIL, "worker"],
        env=vigil_env(database_url, VIGIL_WORKER_METRICS_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                break
            except httpx.HTTPError:
                assert worker.poll() is None, "vigil worker exited"
                assert time.monotonic() < deadline, "vigil worker never served metrics"
                time.sleep(0.2)
        assert 'vigil_jobs_total{status="succeeded"} 0.0' in text
        assert 'vigil_jobs_total{status="failed"} 0.0' in text
        assert "vigil_training_duration_seconds_count" in text
    finally:
        stop(worker)
