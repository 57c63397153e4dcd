"""Real Vigil processes (`vigil serve`, `vigil worker`) and throw-away Postgres clusters."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

VIGIL = [sys.executable, "-m", "app"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vigil_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "VIGIL_DATABASE_URL": database_url,
            "VIGIL_LOG_FORMAT": "text",
            "VIGIL_LOG_LEVEL": "WARNING",
            "VIGIL_EMBEDDED_WORKER": "false",
            "VIGIL_WORKER_METRICS_PORT": "0",
        }
    )
    env.update(extra)
    return env


@contextmanager
def serve(database_url: str, **extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`vigil serve` on a free port; yields its base URL and process; stops it afterwards."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="vigil-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [*VIGIL, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=vigil_env(database_url, **extra),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process, Path(log.name))
        yield base, process
    finally:
        stop(process)
        log.close()
        os.unlink(log.name)


def wait_until_up(
    base: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 60,
    path: str = "/healthz",
) -> None:
    """Poll `path` until it answers 200; raise with the log's tail if the server dies or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"vigil serve exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"vigil serve did not come up:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


class Cluster:
    """A throw-away PostgreSQL cluster of our own (initdb + pg_ctl on a free port), so that
    tests may stop and start a database without touching the machine's server."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
        self.port = free_port()
        self.data = self.dir / "data"
        self.user = "postgres"

    @staticmethod
    def available() -> str | None:
        missing = [b for b in ("initdb", "pg_ctl") if shutil.which(b) is None]
        if missing:
            return f"{', '.join(missing)} not on PATH"
        if os.geteuid() == 0 and shutil.which("su") is None:
            return "running as root without su to drop privileges for postgres"
        return None

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run as the postgres system user.
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.dir)], check=True)
            command = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in args)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.dir / "log"),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
