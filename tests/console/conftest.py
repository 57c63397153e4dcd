"""The console in a real browser: a real `vigil serve` (training worker beside it) on a migrated
SQLite file, driven by the system's headless Chromium through Playwright.

No browser is ever downloaded: Playwright launches /usr/bin/chromium (the Debian package).
Without it (or without Playwright) these tests skip and say why, except under CI=true, where
that fails the run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import make_engine, make_sessionmaker
from app.security import create_key
from tests.conftest import IN_CI
from tests.utils.proc import serve
from tests.utils.stream import STEP_US

CHROMIUM = Path(os.environ.get("VIGIL_TEST_CHROMIUM", "/usr/bin/chromium"))
T0_US = (int(time.time()) // 60 * 60 - 7200) * 1_000_000
"""The pumps' data starts two hours ago, so that the fleet shows fresh data."""
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"

SERVER_ENV = {
    "VIGIL_EMBEDDED_WORKER": "true",
    "VIGIL_TRAIN_MIN_STEPS": "16",
    "VIGIL_TRAIN_MAX_STEPS": "40",
    "VIGIL_TRAIN_MEMBERS": "1",
    "VIGIL_TRAIN_PATIENCE": "3",
    "VIGIL_MIN_TRAIN_WINDOWS": "4",
    "VIGIL_RETRAIN_QUIET_SECONDS": "1",
    "VIGIL_SCORE_LOG_FLUSH_SECONDS": "0.1",
    "VIGIL_MODEL_POLL_SECONDS": "0.2",
    "VIGIL_TORCH_THREADS": os.environ.get("VIGIL_TORCH_THREADS", "1"),
    # Training under SCHED_IDLE waits for an idle CPU, which a shared test machine may not
    # have for minutes: these tests are about the console, not the scheduling.
    "VIGIL_TRAIN_SCHED_IDLE": "false",
}


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system, one for the console tests (package scope: the sync
    API runs an event loop on the main thread until it stops, which would break the
    asyncio.run() of the tests that come after)."""
    reason = _browser_missing()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true requires the console's browser tests)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Plant:
    """A running Vigil with keys and series, and what the browser saw."""

    base: str
    sessions: sessionmaker[Session]
    keys: dict[str, str] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    seed: int = 0

    def api(self, method: str, path: str, key: str = "admin", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[key]}"}
        return httpx.request(method, self.base + path, headers=headers, timeout=60, **kwargs)

    def make_key(self, name: str, *scopes: str, series: list[int] | None = None) -> str:
        with self.sessions() as session, session.begin():
            _, plain = create_key(session=session, name=name, scopes=scopes, series_ids=series)
        self.keys[name] = plain
        return plain

    def labels(self, series_id: int) -> list[dict[str, Any]]:
        """The series' labels, oldest first (a bare list, or a page of them)."""
        answer = self.api("GET", f"/v1/labels?series_id={series_id}&limit=1000").json()
        found: list[dict[str, Any]] = answer if isinstance(answer, list) else answer["labels"]
        return found

    def wait_job(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.api("GET", f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed"):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def pump_values(n: int, *, seed: int, faults: list[tuple[int, int]] = ()) -> np.ndarray:  # type: ignore[assignment]
    """Three channels (vibration, temperature, current): cycles plus noise; a fault lifts
    vibration and temperature."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    values = np.stack(
        [
            np.sin(2 * np.pi * t / 32.0),
            60 + 2 * np.sin(2 * np.pi * t / 400.0),
            4 + 0.5 * np.sin(2 * np.pi * t / 32.0 + 1.0),
        ],
        axis=1,
    )
    values += 0.05 * rng.standard_normal(values.shape)
    for start, stop in faults:
        values[start:stop, 0] += 3.0 + 0.5 * rng.standard_normal(stop - start)
        values[start:stop, 1] += 6.0
    return values


def post_points(plant: Plant, series_id: int, values: np.ndarray, *, offset: int = 0) -> None:
    ts = (T0_US + (offset + np.arange(len(values))) * STEP_US) / 1e6
    for lo in range(0, len(values), 5000):
        body = {
            "timestamps": ts[lo : lo + 5000].tolist(),
            "values": values[lo : lo + 5000].tolist(),
        }
        response = plant.api("POST", f"/v1/series/{series_id}/points", json=body)
        assert response.status_code == 200, response.text


def create_pump(plant: Plant, name: str, *, points: np.ndarray) -> int:
    response = plant.api(
        "POST",
        "/v1/series",
        json={
            "name": name,
            "channels": ["vibration", "temperature", "current"],
            "window_size": 32,
            "stride": 16,
            "classes": {"bearing_wear": "anomaly", "cleaning": "normal"},
        },
    )
    assert response.status_code == 201, response.text
    series_id: int = response.json()["id"]
    post_points(plant, series_id, points)
    return series_id


@contextmanager
def start_plant(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, **env: str
) -> Iterator[Plant]:
    """`vigil serve` on a fresh SQLite database, with an admin key."""
    path = tmp_path_factory.mktemp("console") / "vigil.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url, role="tests")
    try:
        with serve(url, **{**SERVER_ENV, **env}) as (base, _process):
            plant = Plant(base=base, sessions=make_sessionmaker(engine))
            plant.make_key("admin", "admin")
            yield plant
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Plant]:
    with start_plant(tmp_path_factory, sqlite_template) as plant:
        yield plant


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) at a control-room laptop's 1366×768."""
    made = browser.new_context(viewport={"width": 1366, "height": 768}, color_scheme="dark")
    made.set_default_timeout(20_000)
    try:
        yield made
    finally:
        made.close()


def sign_in(page: Any, base: str, key: str) -> None:
    page.goto(f"{base}/console/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/fleet")


def screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    """Keep a screenshot of the page in docs/console/ (the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)
