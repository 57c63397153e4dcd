"""What every service benchmark shares: throw-away databases, a real `vigil serve` in a
subprocess, a trained series, the load client, and JSON output with provenance.

Nothing here measures anything by itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import pickle
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psycopg

from tests.utils.proc import free_port, stop, wait_until_up

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "benchmarks" / "out"
PYTHON = sys.executable
POSTGRES_ADMIN_URL = os.environ.get(
    "VIGIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHANNELS = [f"ch{i}" for i in range(6)]
WINDOW = 128
STRIDE = 64
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, epoch seconds


# -- provenance and output --------------------------------------------------------------------
def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def git_dirty() -> bool:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "models"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(out.strip())


def provenance(command: str) -> dict[str, Any]:
    return {
        "command": command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_head": git_head(),
        "app_uncommitted_changes": git_dirty(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "_cpu_at_start": machine_cpu(),  # for the steal over the run (write_result)
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if "_cpu_at_start" in data:
        data = {
            **data,
            "cpu_steal_share_over_run": steal_share(data["_cpu_at_start"], machine_cpu()),
        }
        del data["_cpu_at_start"]
    path = OUT_DIR / f"service_{name}.json"
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


# -- databases --------------------------------------------------------------------------------
def migrate(url: str) -> None:
    subprocess.run(
        [PYTHON, "-m", "app", "migrate"],
        env={**_clean_env(), "VIGIL_DATABASE_URL": url},
        cwd=REPO,
        check=True,
        capture_output=True,
    )


def postgres_available() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}"
    return None


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A migrated database `vigil_bench_*` on the shared server, dropped afterwards."""
    name = f"vigil_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    url = f"sqlite:///{folder / 'vigil.db'}"
    try:
        migrate(url)
        yield url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    manager = postgres_database() if kind == "postgres" else sqlite_database()
    with manager as url:
        yield url


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


# -- the service ------------------------------------------------------------------------------
def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@dataclass
class Server:
    base: str
    port: int
    key: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def embedded_worker(self) -> bool:
        return self.extra.get("embedded_worker", "true").lower() not in ("false", "0", "no")

    def _spawned(self) -> list[int]:
        """multiprocessing children of `vigil serve`, oldest first."""
        kids = [p for p in children(self.process.pid) if "spawn_main" in cmdline(p)]
        return sorted(kids, key=start_time)

    def api_pids(self) -> list[int]:
        """The processes that serve HTTP: uvicorn's workers, or `vigil serve` itself."""
        spawned = self._spawned()
        # The embedded training worker is started before uvicorn, so it is the oldest child.
        serving = spawned[1:] if self.embedded_worker else spawned
        return serving or [self.process.pid]

    def scorer_pids(self) -> list[int]:
        """The scoring children (`python -m app.scoring.process`) of the serving processes."""
        return [
            c for p in self.api_pids() for c in children(p) if "app.scoring.process" in cmdline(c)
        ]

    def serving_pids(self) -> list[int]:
        """The API processes and their scoring children: what a request costs in CPU and memory."""
        return [*self.api_pids(), *self.scorer_pids()]

    def training_worker_pids(self) -> list[int]:
        spawned = self._spawned()
        return spawned[:1] if self.embedded_worker else []


def start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except OSError:
        return 0


APP_DIR = Path(os.environ["VIGIL_BENCH_APP_DIR"]) if "VIGIL_BENCH_APP_DIR" in os.environ else None
"""Another checkout's `app/` and `models/` to serve (e.g. `git archive HEAD` for "before")."""


@contextlib.contextmanager
def serve(url: str, *, app_dir: Path | None = APP_DIR, **settings: str) -> Iterator[Server]:
    """`vigil serve` on a free port with an admin key; VIGIL_* overrides as keyword args
    (lower-case names without the prefix). Defaults otherwise, except the log level, which is
    WARNING unless given: the benchmarks measure the service, not a terminal.
    The code served is `app_dir`'s (by default VIGIL_BENCH_APP_DIR's, else this checkout's)."""
    port = free_port()
    key = "vgl_bench_" + secrets.token_urlsafe(24)
    env = _clean_env()
    env.update(
        {
            "VIGIL_DATABASE_URL": url,
            "VIGIL_BOOTSTRAP_ADMIN_KEY": key,
            "VIGIL_HOST": "127.0.0.1",
            "VIGIL_PORT": str(port),
            "VIGIL_WORKER_METRICS_PORT": "0",
            "VIGIL_LOG_LEVEL": "WARNING",
        }
    )
    env.update({f"VIGIL_{k.upper()}": v for k, v in settings.items()})
    if app_dir is not None:
        env["PYTHONPATH"] = str(app_dir)
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
        prefix="vigil-bench-serve-", suffix=".log", delete=False
    )
    process = subprocess.Popen(
        [PYTHON, "-m", "app", "serve"],
        env=env,
        cwd=app_dir or REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = Server(
        f"http://127.0.0.1:{port}", port, key, process, env, Path(log_file.name), settings
    )
    try:
        wait_until_up(server.base, server.process, server.log_path, 90, path="/readyz")
        yield server
    finally:
        stop(process, timeout=60)
        log_file.close()
        with contextlib.suppress(OSError):
            os.unlink(log_file.name)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_cpu() -> tuple[int, int]:
    """(steal, total) CPU time of the whole machine so far, in clock ticks (/proc/stat).

    Steal is time the hypervisor gave this VM's virtual CPUs to someone else: on a shared
    host it slows every measurement, so the benchmarks record it beside their figures."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- data and a trained series ----------------------------------------------------------------
def sensor_values(n_points: int, *, seed: int = 0, offset: int = 0) -> np.ndarray:
    """(n, 6) float64: phase-shifted sines with noise, like a healthy machine."""
    rng = np.random.default_rng(seed)
    t = np.arange(offset, offset + n_points, dtype=np.float64)
    phases = np.linspace(0.0, np.pi, len(CHANNELS))
    values = np.sin(2 * np.pi * t[:, None] / 50.0 + phases[None, :])
    return values + 0.05 * rng.standard_normal((n_points, len(CHANNELS)))


def points_json(n_points: int, *, start: int = 0, seed: int = 0, iso: bool = False) -> bytes:
    """An ingestion body of n points, one a second from T0 + start (epoch ints or ISO text)."""
    seconds = np.arange(T0 + start, T0 + start + n_points, dtype=np.int64)
    if iso:
        stamps: list[Any] = np.datetime_as_string(
            seconds.astype("datetime64[s]"), unit="s", timezone="UTC"
        ).tolist()
    else:
        stamps = seconds.tolist()
    values = sensor_values(n_points, seed=seed, offset=start)
    return orjson.dumps({"timestamps": stamps, "values": values.tolist()})


def create_series(server: Server, name: str) -> int:
    response = httpx.post(
        f"{server.base}/v1/series",
        headers=server.headers,
        json={"name": name, "channels": CHANNELS, "window_size": WINDOW, "stride": STRIDE},
        timeout=30,
    )
    response.raise_for_status()
    series_id: int = response.json()["id"]
    return series_id


def ingest(server: Server, series_id: int, body: bytes, *, timeout: float = 300) -> dict[str, Any]:
    response = httpx.post(
        f"{server.base}/v1/series/{series_id}/points",
        headers={**server.headers, "Content-Type": "application/json"},
        content=body,
        timeout=timeout,
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def train_in_process(url: str, series_id: int, *, steps: int = 20) -> int:
    """Queue a job through the service's own code and run it here with a short budget.

    The scoring cost of a model does not depend on how long it trained, only on its size,
    which is the default (recurrent, Table 15)."""
    from app.config import Settings
    from app.db.models import Series
    from app.db.session import make_engine, make_sessionmaker
    from app.training.jobs import enqueue_training
    from app.training.worker import Worker

    settings = Settings(
        database_url=url,
        embedded_worker=False,
        train_steps=steps,
        train_patience=steps,
        min_train_windows=8,
    )
    engine = make_engine(url, role="bench")
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session, session.begin():
            series = session.get(Series, series_id)
            assert series is not None
            job, _ = enqueue_training(session=session, series=series, reason="manual")
            session.flush()
            job_id = job.id
        Worker(settings, sessions=sessions).run_once()
    finally:
        engine.dispose()
    return job_id


def trained_series(server: Server, url: str, *, name: str = "bench-1", points: int = 8_000) -> int:
    series_id = create_series(server, name)
    ingest(server, series_id, points_json(points))
    train_in_process(url, series_id)
    wait_for_model(server, series_id)
    return series_id


def wait_for_model(server: Server, series_id: int, timeout: float = 30.0) -> None:
    """Until /v1/score answers 200 for this series (the API polls for active versions)."""
    body = score_json_body(series_id, window_batch(1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.post(
            f"{server.base}/v1/score",
            headers={**server.headers, "Content-Type": "application/json"},
            content=body,
            timeout=30,
        )
        if response.status_code == 200:
            return
        time.sleep(0.3)
    raise RuntimeError(f"series {series_id} has no servable model: {response.text[:300]}")


def install_models(url: str, artifact: bytes, series_ids: list[int]) -> None:
    """A copy of `artifact` as the active version 1 of each series, in one transaction, as
    if each had trained (a model's cost at rest does not depend on its weights)."""
    from app.db.base import utcnow
    from app.db.models import MODEL_ACTIVE, ModelVersion
    from app.db.session import make_engine, make_sessionmaker, transaction
    from app.training.versions import count_activation

    engine = make_engine(url, role="bench")
    digest = hashlib.sha256(artifact).hexdigest()
    with transaction(make_sessionmaker(engine)) as session:
        for series_id in series_ids:
            session.add(
                ModelVersion(
                    series_id=series_id,
                    version=1,
                    status=MODEL_ACTIVE,
                    artifact=artifact,
                    sha256=digest,
                    metrics={},
                    trained_at=utcnow(),
                    activated_at=utcnow(),
                )
            )
        count_activation(session)  # the registry's poll re-reads the active versions
    engine.dispose()


def active_artifact(url: str, series_id: int) -> bytes:
    from sqlalchemy import select

    from app.db.models import MODEL_ACTIVE, ModelVersion
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(url, role="bench")
    try:
        with make_sessionmaker(engine)() as session:
            blob = session.scalar(
                select(ModelVersion.artifact).where(
                    ModelVersion.series_id == series_id, ModelVersion.status == MODEL_ACTIVE
                )
            )
    finally:
        engine.dispose()
    assert blob is not None
    return bytes(blob)


# -- requests ---------------------------------------------------------------------------------
def window_batch(n: int, *, seed: int = 1) -> np.ndarray:
    """(n, 128, 6) float32 windows of healthy data."""
    values = sensor_values(n * WINDOW, seed=seed).astype(np.float32)
    return values.reshape(n, WINDOW, len(CHANNELS))


def score_json_body(series_id: int, windows: np.ndarray) -> bytes:
    return orjson.dumps({"series_id": series_id, "windows": windows.tolist()})


def raw_request(server: Server, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in {**server.headers, **headers}.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def score_requests(
    server: Server, series_id: int, *, windows: int, wire: str, variants: int = 8
) -> list[bytes]:
    """Ready-made POST /v1/score requests, `variants` different bodies of `windows` windows."""
    requests = []
    for k in range(variants):
        batch = window_batch(windows, seed=100 + k)
        if wire == "json":
            requests.append(
                raw_request(
                    server,
                    "/v1/score",
                    score_json_body(series_id, batch),
                    {"Content-Type": "application/json"},
                )
            )
        else:
            requests.append(
                raw_request(
                    server,
                    "/v1/score",
                    np.ascontiguousarray(batch, dtype="<f4").tobytes(),
                    {
                        "Content-Type": "application/octet-stream",
                        "X-Vigil-Series-Id": str(series_id),
                        "X-Vigil-Shape": f"{windows},{WINDOW},{len(CHANNELS)}",
                    },
                )
            )
    return requests


@dataclass
class Load:
    concurrency: int
    duration: float
    warmup: float = 1.0
    windows_per_request: int = 1
    requests: int = 0
    check_body: bool = False


def run_load(server: Server, requests: list[bytes], load: Load) -> dict[str, Any]:
    """Run the load client in its own process and return its JSON result."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-load-") as folder:
        requests_file = Path(folder) / "requests.pickle"
        requests_file.write_bytes(pickle.dumps(requests))
        spec = {
            "host": "127.0.0.1",
            "port": server.port,
            "requests_file": str(requests_file),
            **asdict(load),
        }
        spec_file = Path(folder) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        budget = load.warmup + (load.duration if not load.requests else 600) + 120
        done = subprocess.run(
            [PYTHON, "-m", "benchmarks.service.client", str(spec_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=budget,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    if bad or result["connection_failures"]:
        raise RuntimeError(f"load client saw failures: {bad} {result['errors'][:2]}")
    return result


def run_limit(artifact: bytes, *, threads: int, batches: list[int], seconds: float) -> Any:
    """The model's own speed, measured in a fresh process (benchmarks.service.limit)."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-limit-") as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(artifact)
        done = subprocess.run(
            [
                PYTHON,
                "-m",
                "benchmarks.service.limit",
                str(path),
                "--threads",
                str(threads),
                "--seconds",
                str(seconds),
                "--batches",
                ",".join(map(str, batches)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])
