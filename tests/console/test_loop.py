"""The operator's whole loop in the browser: sign in, find the series with an open alarm, see
its chart, mark the alarm a false alarm in one click (and confirm the fault with a keyboard
shortcut), trigger the retrain and watch its progress, and see the marked windows score lower
on the feedback page.

Built to hold by construction, as the detection tests are: the fault is a level shift of 3 on
one channel; the benign episode holds another channel on a plateau the first model never saw,
so it alarms; after the retrain that episode is in the training data and labelled
false_positive, so the new version scores it lower relative to its threshold. Training uses
the service's default budget (600 to 3000 steps): with the denoising criterion, 300 steps left
seed 11's retrain making false alarms on held-out windows, and the gate rightly kept it as a
candidate. Also checked at seeds 3, 5 and 13. Assertions compare with margins.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.console.conftest import Plant, screenshot, sign_in, start_plant
from tests.utils.stream import make_stream

pytestmark = [
    pytest.mark.slow,
    # Two trainings of 600-3000 steps on a shared 2-core machine: more than the default 300 s.
    pytest.mark.timeout(900),
]

FAULT = (1800, 1840)  # channel c1 shifted up by 3
BENIGN = (2100, 2140)  # channel c2 held at 1.8: a plateau the first model never saw
TRAINED = 1600  # points the first version trains on
SENT = 2300  # points sent in all


def _stream(seed: int) -> tuple[np.ndarray, np.ndarray]:
    stream = make_stream(SENT, seed=seed)
    values = stream.values.copy()
    # Data up to a minute ago, so that the fleet shows it fresh.
    ts = stream.ts - stream.ts[0] + (int(time.time()) - SENT - 60) * 1_000_000
    rng = np.random.default_rng(seed + 1)
    values[FAULT[0] : FAULT[1], 1] += 3.0 + 0.3 * rng.standard_normal(FAULT[1] - FAULT[0])
    values[BENIGN[0] : BENIGN[1], 2] = 1.8 + 0.05 * rng.standard_normal(BENIGN[1] - BENIGN[0])
    return ts, values


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000)


@pytest.fixture(params=[(7, 1), (11, 2)], ids=["seed7-1thread", "seed11-2threads"])
def loop_plant(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> Iterator[Plant]:
    """A server of its own per (seed, torch threads): the loop must hold on both."""
    seed, threads = request.param
    with start_plant(
        tmp_path_factory,
        sqlite_template,
        VIGIL_TRAIN_MIN_STEPS="600",
        VIGIL_TRAIN_MAX_STEPS="3000",
        VIGIL_TRAIN_PATIENCE="10",
        VIGIL_TRAIN_THREADS=str(threads),
        VIGIL_SCORE_THREADS=str(threads),
        VIGIL_ACTIVATION_TOLERANCE="1.0",
        # Verdicts arm a retrain that waits for quiet; the operator's Train now makes it due.
        VIGIL_RETRAIN_QUIET_SECONDS="600",
    ) as plant:
        plant.seed = seed
        yield plant


def test_the_operators_loop(loop_plant: Plant, context: Any) -> None:
    plant = loop_plant
    ts, values = _stream(seed=plant.seed)
    created = plant.api(
        "POST",
        "/v1/series",
        json={
            "name": "pump-7",
            "channels": ["c0", "c1", "c2"],
            "window_size": 16,
            "stride": 8,
            "classes": {"bearing_wear": "anomaly", "cleaning": "normal"},
        },
    )
    assert created.status_code == 201, created.text
    series_id = created.json()["id"]

    def send(lo: int, hi: int) -> None:
        body = {"timestamps": (ts[lo:hi] / 1e6).tolist(), "values": values[lo:hi].tolist()}
        response = plant.api("POST", f"/v1/series/{series_id}/points", json=body)
        assert response.status_code == 200, response.text

    send(0, TRAINED)
    job = plant.api("POST", f"/v1/series/{series_id}/train").json()
    assert plant.wait_job(job["id"], timeout=300)["status"] == "succeeded"
    for lo in range(TRAINED, SENT, 100):
        send(lo, min(lo + 100, SENT))

    def alarms_on(span: tuple[int, int]) -> list[dict[str, Any]]:
        body = plant.api("GET", f"/v1/alarms?series_id={series_id}&limit=1000").json()
        lo, hi = int(ts[span[0]]), int(ts[span[1] - 1])
        return [
            a
            for a in body["alarms"]
            if a["kind"] == "model" and _us(a["start"]) <= hi and _us(a["end"]) >= lo
        ]

    deadline = time.monotonic() + 60
    while not (alarms_on(BENIGN) and alarms_on(FAULT)) and time.monotonic() < deadline:
        time.sleep(0.2)
    benign, fault = alarms_on(BENIGN), alarms_on(FAULT)
    assert benign and fault, "the detector raised no alarm on the benign episode or the fault"

    plant.make_key("operator", "read", "label", "train")
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["operator"])

    # The fleet shows the series with its alarms; its chart shows them as bands.
    row = page.locator(f'#fleet-body tr[data-series="{series_id}"]')
    assert row.get_attribute("data-status") in {"open_alarms", "healthy"}
    row.locator("a").first.click()
    page.wait_for_selector("#charts[aria-busy=false] .chart[data-channel=score] canvas")
    page.wait_for_selector(f'#series-alarms [data-alarm="{benign[0]["id"]}"]')
    page.click(f'#series-alarms [data-alarm="{benign[0]["id"]}"] button')
    # A model alarm and a data-quality alarm on the same span say which is which.
    kinds = page.locator("#series-alarms .alarm-item span.muted").all_inner_texts()
    assert any(text.startswith("model: ") for text in kinds), kinds
    page.wait_for_selector("#contrib[data-drawn=true]")
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "series-alarms", full_page=True)

    # A read key sees the queue but every verdict button is disabled, and a forged verdict
    # (its own session cookie and CSRF token) is refused.
    plant.make_key("reader", "read")
    reader = context.browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        looker = reader.new_page()
        sign_in(looker, plant.base, plant.keys["reader"])
        looker.goto(f"{plant.base}/console/alarms?series_id={series_id}")
        seen = looker.locator(f'article.alarm[data-alarm="{benign[0]["id"]}"]')
        seen.wait_for()
        for button in ("verdict-fp", "verdict-confirm", "verdict-ack"):
            assert seen.locator(f"button.{button}").is_disabled()
        csrf = looker.get_attribute('meta[name="csrf-token"]', "content")
        forged = looker.request.post(
            f"{plant.base}/v1/alarms/{benign[0]['id']}/verdict",
            headers={"X-CSRF-Token": csrf},
            data={"label": "false_positive"},
        )
        assert forged.status == 403, forged.text()
    finally:
        reader.close()
    assert plant.api("GET", f"/v1/alarms/{benign[0]['id']}").json()["verdict"] is None

    # The review queue: one click marks the benign alarm false; a shortcut confirms the fault.
    page.goto(f"{plant.base}/console/alarms?series_id={series_id}")
    card = page.locator(f'article.alarm[data-alarm="{benign[0]["id"]}"]')
    card.wait_for()
    page.wait_for_selector("article.alarm .excerpt canvas")
    screenshot(page, "alarms")
    card.locator("button.verdict-fp").click()
    page.wait_for_selector("#toast .msg:has-text('false alarm')")
    card.wait_for(state="detached")
    judged = plant.api("GET", f"/v1/alarms/{benign[0]['id']}").json()
    assert judged["status"] == "dismissed"
    assert judged["verdict"] == "false_positive"
    retrain_id = judged["retrain_job_id"]
    assert retrain_id is not None
    fault_card = page.locator(f'article.alarm[data-alarm="{fault[0]["id"]}"]')
    fault_card.locator("header").click()
    page.keyboard.press("c")  # confirm as the chosen class (bearing_wear)
    fault_card.wait_for(state="detached")
    assert plant.api("GET", f"/v1/alarms/{fault[0]['id']}").json()["verdict"] == "bearing_wear"
    # The retrain the verdicts queued shows up live beside the queue.
    page.wait_for_selector(f'#jobs [data-job="{retrain_id}"]')

    # Train now makes that retrain due; the progress bar follows it to the end.
    page.goto(f"{plant.base}/console/models?series_id={series_id}")
    page.click("#train-now")
    page.wait_for_selector(f'#train-status[data-job="{retrain_id}"]')
    page.wait_for_selector("#train-status[data-status=running]", timeout=120_000)
    page.wait_for_function(
        "() => document.getElementById('train-progress').value >= 0.2", timeout=120_000
    )
    screenshot(page, "models-training")
    page.wait_for_selector("#train-status[data-status=succeeded]", timeout=300_000)
    done = plant.wait_job(retrain_id)
    assert done["status"] == "succeeded"
    assert done["metrics"]["activated"] is True, str(done["metrics"])

    # The feedback page: the false alarm's windows score lower under the new version,
    # relative to each version's threshold.
    page.goto(f"{plant.base}/console/feedback?series_id={series_id}")
    marked = page.locator('tr[data-label="false_positive"] td.ratio')
    assert marked.count() >= 1
    for cell in marked.all():
        before = float(cell.get_attribute("data-previous"))
        after = float(cell.get_attribute("data-current"))
        assert after < 0.8 * before, (before, after)
    screenshot(page, "feedback")
