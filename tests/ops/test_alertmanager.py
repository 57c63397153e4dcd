"""Alertmanager in the compose stack: its configuration, Prometheus' `alerting:` block, and
the entrypoint that hands it the receiver URL from .env.

`amtool check-config` validates the file when amtool is on PATH (Debian: `apt-get install
prometheus-alertmanager`); the structural tests run everywhere, without network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.test_compose import services

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "docker" / "alertmanager" / "alertmanager.yml"
PROMETHEUS = ROOT / "docker" / "prometheus" / "prometheus.yml"
AMTOOL = shutil.which("amtool")
URL_FILE = "/tmp/webhook_url"


def config() -> dict[str, Any]:
    loaded = yaml.safe_load(CONFIG.read_text())
    assert isinstance(loaded, dict)
    return loaded


def routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    """A route and every route below it."""
    found = [route]
    for child in route.get("routes", []):
        found += routes(child)
    return found


def test_every_route_ends_at_a_defined_receiver() -> None:
    loaded = config()
    receivers = {receiver["name"]: receiver for receiver in loaded["receivers"]}
    assert len(receivers) == len(loaded["receivers"]), "duplicate receiver names"
    root = loaded["route"]
    assert root["receiver"] in receivers, "the root route needs a default receiver"
    assert "matchers" not in root and "match" not in root, "the root route matches everything"
    for route in routes(root):
        assert route.get("receiver", root["receiver"]) in receivers, route
        assert "match" not in route and "match_re" not in route, "deprecated: use matchers"


def test_open_alarms_are_routed_promptly_and_repeated() -> None:
    root = config()["route"]
    (alarms,) = [r for r in routes(root) if 'alertname="VigilOpenAlarms"' in r.get("matchers", [])]
    assert "series" in alarms["group_by"], "one notification per series"
    assert _seconds(alarms["group_wait"]) <= 30
    assert _seconds(alarms["repeat_interval"]) <= _seconds(root["repeat_interval"])
    receiver = next(r for r in config()["receivers"] if r["name"] == alarms["receiver"])
    assert receiver["webhook_configs"], "the open-alarm route must reach a webhook"


def test_the_webhook_url_comes_from_the_env_file() -> None:
    for receiver in config()["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            assert "url" not in webhook, "a literal URL (and its token) in the config"
            assert webhook["url_file"] == URL_FILE
            assert webhook["send_resolved"] is True
    service = services()["alertmanager"]
    assert service["environment"]["ALERTMANAGER_WEBHOOK_URL"].startswith(
        "${ALERTMANAGER_WEBHOOK_URL:-"
    )
    script = service["entrypoint"][-1]
    assert f"> {URL_FILE}" in script
    assert "$$ALERTMANAGER_WEBHOOK_URL" in script  # escaped: expanded by sh, not compose
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in script
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    assert mounts["/etc/alertmanager/alertmanager.yml"] == "./docker/alertmanager/alertmanager.yml"
    assert service["ports"] == ["127.0.0.1:${ALERTMANAGER_PORT:-9093}:9093"]


def test_the_entrypoint_writes_the_url_exactly(tmp_path: Path) -> None:
    """The compose entrypoint, run by sh with the file and binary swapped for test ones:
    the URL arrives byte for byte, whatever characters a token holds."""
    script = services()["alertmanager"]["entrypoint"][-1]
    target = tmp_path / "webhook_url"
    shell = (
        script.replace("$$", "$")
        .replace(URL_FILE, str(target))
        .replace("exec /bin/alertmanager", "exit 0 #")
    )
    url = "https://hooks.example.com/services/T0/B1/x%20y?token=a&b=$c;d'e"
    result = subprocess.run(
        ["sh", "-c", shell],
        env={"ALERTMANAGER_WEBHOOK_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert target.read_text() == url


def test_prometheus_sends_alerts_to_alertmanager() -> None:
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    (manager,) = prometheus["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    assert "alertmanager" in services()
    assert services()["prometheus"]["depends_on"]["alertmanager"] == {
        "condition": "service_started"
    }


def test_amtool_checks_the_config(tmp_path: Path) -> None:
    if AMTOOL is None:
        pytest.skip("amtool is not on PATH (Debian: apt-get install prometheus-alertmanager)")
    version = subprocess.run(
        [AMTOOL, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r"version (\d+)\.(\d+)", version.stdout + version.stderr)
    checked = CONFIG
    if match and (int(match.group(1)), int(match.group(2))) < (0, 26):
        # url_file arrived in Alertmanager 0.26 (the image is 0.27): check everything else
        # with an older amtool by giving it a literal URL instead.
        checked = tmp_path / "alertmanager.yml"
        checked.write_text(
            CONFIG.read_text().replace(f"url_file: {URL_FILE}", "url: http://receiver.invalid/")
        )
    result = subprocess.run(
        [AMTOOL, "check-config", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", duration))
