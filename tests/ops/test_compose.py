"""docker-compose.yml and .env.example.

`docker compose config` validates the file wherever the compose plugin is installed; the
structural tests below run everywhere (no Docker engine is needed for either).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
VIGIL_SERVICES = ("migrate", "api", "worker")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SECRETS = ("POSTGRES_PASSWORD", "VIGIL_BOOTSTRAP_ADMIN_KEY", "GRAFANA_ADMIN_PASSWORD")
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?([-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]  # type: ignore[no-any-return]


def env_example() -> tuple[dict[str, str], set[str]]:
    """Variables set in .env.example, and those only mentioned in comments."""
    values: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line.strip()):
            values[match.group(1)] = match.group(2)
        elif match := re.fullmatch(r"#\s*([A-Z_][A-Z0-9_]*)=.*", line.strip()):
            mentioned.add(match.group(1))
    return values, mentioned


def compose_plugin_missing() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no output"])[0]
        return f"the docker compose plugin is not installed ({detail})"
    return None


def test_docker_compose_config_validates() -> None:
    reason = compose_plugin_missing()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        ["docker", "compose", "--env-file", ".env.example", "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_stack_has_its_services() -> None:
    assert set(services()) == {
        "postgres",
        "migrate",
        "api",
        "worker",
        "prometheus",
        "alertmanager",
        "grafana",
        "simulator",
    }
    for name, service in services().items():
        assert "container_name" not in service, f"{name}: fixed names block scaling"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            assert rule["condition"] in CONDITIONS, name


def test_postgres_keeps_its_data_and_reports_health() -> None:
    postgres = services()["postgres"]
    assert postgres["image"] == "postgres:15"
    volume, target = postgres["volumes"][0].split(":")
    assert target == "/var/lib/postgresql/data"
    assert volume in compose()["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_vigil_services_share_one_image() -> None:
    for name in VIGIL_SERVICES:
        service = services()[name]
        assert service["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}, name
        assert service["image"] == services()["api"]["image"], name
        environment = service["environment"]
        assert environment["VIGIL_EMBEDDED_WORKER"] == "false", name
        assert environment["VIGIL_ENVIRONMENT"] == "production", name
        url = environment["VIGIL_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://vigil:${POSTGRES_PASSWORD:?"), name
        assert url.endswith("@postgres:5432/vigil"), name


def test_migrate_runs_once_before_api_and_worker() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] == ["vigil", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        depends = services()[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == {"condition": "service_healthy"}, name


def test_api_serves_with_several_processes() -> None:
    api = services()["api"]
    command = api["command"]
    assert command[:2] == ["vigil", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--workers") + 1] == "${VIGIL_API_WORKERS:-4}"
    assert api["ports"] == ["${VIGIL_API_PORT:-8000}:8000"]
    assert api["environment"]["VIGIL_HEALTHCHECK_URL"].endswith(":8000/healthz")
    assert api["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/vigil-healthcheck"]


def test_worker_scales() -> None:
    worker = services()["worker"]
    assert worker["command"] == ["vigil", "worker"]
    assert "ports" not in worker, "a published port collides between replicas"
    assert worker["expose"] == ["9101"]
    assert worker["environment"]["VIGIL_WORKER_METRICS_PORT"] == "9101"
    assert worker["environment"]["VIGIL_HEALTHCHECK_URL"] == "http://127.0.0.1:9101/metrics"
    assert "deploy" not in worker or "replicas" not in worker["deploy"]


def test_simulator_is_an_opt_in_client_of_the_api() -> None:
    simulator = services()["simulator"]
    assert simulator["profiles"] == ["demo"], "`docker compose up` must not start it"
    assert simulator["image"] == services()["api"]["image"]
    assert simulator["command"][:2] == ["vigil", "simulate"]
    assert "--url=http://api:8000" in simulator["command"]
    assert simulator["environment"] == {
        "VIGIL_API_KEY": "${VIGIL_BOOTSTRAP_ADMIN_KEY:?set VIGIL_BOOTSTRAP_ADMIN_KEY in .env "
        "(see .env.example)}"
    }
    assert simulator["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert simulator["restart"] == "no"


def test_monitoring_mounts_exist() -> None:
    for name in ("prometheus", "alertmanager", "grafana"):
        for mount in services()[name]["volumes"]:
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in compose()["volumes"], f"{name}: undeclared volume {source}"
    prometheus = services()["prometheus"]
    assert prometheus["ports"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]


def test_secrets_come_from_the_env_file() -> None:
    text = COMPOSE.read_text()
    values, mentioned = env_example()
    used = {match.group(1): match.group(2) for match in VARIABLE.finditer(text)}
    for secret in SECRETS:
        assert used.get(secret) == "?", f"{secret} must be required (${{{secret}:?...}})"
        assert "change-me" in values[secret], f".env.example must mark {secret} change-me"
    for name, kind in used.items():
        if kind == "?":
            assert name in values, f"{name} is required but not in .env.example"
        else:
            assert name in values or name in mentioned, f"{name} is not in .env.example"
    # No literal secret anywhere in the compose file.
    environments = [s.get("environment", {}) for s in services().values()]
    for environment in environments:
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|_KEY$", key):
                assert str(value).startswith("${"), f"{key} is a literal"


def test_grafana_refuses_the_placeholder_password() -> None:
    grafana = services()["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    script = grafana["entrypoint"][-1]
    assert "*change-me*" in script and "exec /run.sh" in script
    assert "$$GF_SECURITY_ADMIN_PASSWORD" in script  # escaped: expanded by sh, not compose
    # The guard really rejects the example's value and accepts a real one.
    placeholder = env_example()[0]["GRAFANA_ADMIN_PASSWORD"]
    shell = script.replace("$$", "$").replace("exec /run.sh", "exit 0")
    for password, expected in ((placeholder, 1), ("b7Qm4kX9vR2pL8sT", 0)):
        result = subprocess.run(
            ["sh", "-c", shell],
            env={"GF_SECURITY_ADMIN_PASSWORD": password, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == expected, password


def test_env_and_secrets_stay_out_of_git_and_the_image() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()
