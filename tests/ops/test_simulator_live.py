"""`vigil simulate` against a real `vigil serve` (SQLite, embedded worker) on loopback."""

from __future__ import annotations

import io
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from vigil_client import Client

from app.simulator.driver import Simulation, SimulationConfig

SERVE = "import sys; from app.cli import main; sys.argv[0] = 'vigil'; main()"


@dataclass(frozen=True)
class LiveVigil:
    url: str
    key: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_vigil(tmp_path: Path) -> Iterator[LiveVigil]:
    key = secrets.token_urlsafe(32)
    port = free_port()
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": f"sqlite:///{tmp_path / 'vigil.db'}",
        "VIGIL_BOOTSTRAP_ADMIN_KEY": key,
        "VIGIL_TRAIN_EPOCHS": "3",
        "VIGIL_LOG_FORMAT": "text",
        "VIGIL_LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [sys.executable, "-c", SERVE, "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield LiveVigil(url=f"http://127.0.0.1:{port}", key=key)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_the_simulator_drives_a_live_service(live_vigil: LiveVigil) -> None:
    config = SimulationConfig(
        url=live_vigil.url,
        api_key=live_vigil.key,
        machines=2,
        steps=1200,
        speed=0.0,  # as fast as the service accepts
        seed=3,
        warmup_steps=576,
        window_size=32,
        stride=16,
        faults_per_day=6.0,
        retrain_after_feedback=0,
        ready_timeout_s=60.0,
        drain_timeout_s=180.0,
    )
    output = io.StringIO()
    with Client(live_vigil.url, api_key=live_vigil.key) as client:
        report = Simulation(config, client=client, console=Console(file=output, width=160)).run()

        assert not report.interrupted
        assert report.steps == 1200
        assert report.faults, "the plan must inject faults after the warm-up"
        windows_per_pump = (1200 - 576 - 32) // 16 + 1
        for run in report.machines:
            assert run.posted == 1200
            assert run.trainings == 1 and run.model_version == "1", output.getvalue()
            assert run.tally.scored == windows_per_pump
        assert report.total.scored == 2 * windows_per_pump
        names = {series.name for series in client.iter_series()}
        assert {run.series_name for run in report.machines} <= names
        if report.alarms_api:
            # The operator judged the service's alarms: every verdict it reported is stored
            # on the alarm it was meant for, and every alarm it saw is one of its series'.
            for run in report.machines:
                alarms = list(client.iter_alarms(series_id=run.series_id))
                assert {a.id for a in alarms} == set(run.alarms)
                assert sum(1 for a in alarms if a.verdict) >= run.verdicts
            assert report.total.alarm_events == sum(len(run.alarms) for run in report.machines)
            assert report.total.alarm_events >= 1, "faults on a trained pump open alarms"
            assert "alarm" in output.getvalue()
        else:
            # Every label the operator reported is stored, on the series it was meant for.
            for run in report.machines:
                stored = list(client.iter_labels(series_id=run.series_id))
                assert len(stored) == run.feedback
    assert "Vigil plant simulator" in output.getvalue()
