"""The console's pages in headless Chromium against a real `vigil serve`: sign-in, fleet,
series charts and labelling, models and training, scopes, CSRF, and nothing from another
origin. Screenshots of each page go to docs/console/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.conftest import (
    T0_US,
    Plant,
    create_pump,
    pump_values,
    screenshot,
    sign_in,
)

FAULT = (4000, 4300)


@pytest.fixture(scope="module")
def plant(running: Plant) -> Iterator[Plant]:
    """Three pumps: pump-1 trained and scored, with a fault and a label; pump-2 with data but
    no model; pump-3 seen only by a restricted key."""
    pump1 = create_pump(running, "pump-1", points=pump_values(6000, seed=1, faults=[FAULT]))
    pump2 = create_pump(running, "pump-2", points=pump_values(2000, seed=2))
    pump3 = create_pump(running, "pump-3", points=pump_values(1000, seed=3))
    running.series = {"pump-1": pump1, "pump-2": pump2, "pump-3": pump3}
    job = running.api("POST", f"/v1/series/{pump1}/train").json()
    assert running.wait_job(job["id"])["status"] == "succeeded"
    start, end = T0_US / 1e6, T0_US / 1e6 + 5999
    scored = running.api("POST", "/v1/score", json={"series_id": pump1, "start": start, "end": end})
    assert scored.status_code == 200, scored.text
    label = running.api(
        "POST",
        "/v1/labels",
        json={
            "series_id": pump1,
            "start": start + FAULT[0],
            "end": start + FAULT[1],
            "label": "bearing_wear",
        },
    )
    assert label.status_code == 201, label.text
    running.make_key("operator", "read", "label", "train")
    running.make_key("reader", "read")
    running.make_key("restricted", "read", "label", series=[pump3])
    yield running


def test_fleet_lists_every_series_with_status_and_filters(plant: Plant, context: Any) -> None:
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["operator"])
    rows = page.locator("#fleet-body tr[data-series]")
    assert rows.count() == 3
    statuses = {
        row.get_attribute("data-series"): row.get_attribute("data-status") for row in rows.all()
    }
    assert statuses[str(plant.series["pump-2"])] == "no_model"
    assert statuses[str(plant.series["pump-1"])] in {"healthy", "training", "open_alarms"}
    assert page.locator(f'tr[data-series="{plant.series["pump-1"]}"] svg.spark').count() == 1
    screenshot(page, "fleet")

    page.fill("#q", "pump-2")
    page.wait_for_function(
        "() => document.querySelectorAll('#fleet-body tr[data-series]').length === 1"
    )
    page.fill("#q", "")
    page.wait_for_function(
        "() => document.querySelectorAll('#fleet-body tr[data-series]').length === 3"
    )
    page.click('button.sort[data-sort="name"]')
    page.wait_for_function(
        "() => [...document.querySelectorAll('#fleet-body tr[data-series] a')]"
        ".map(a => a.textContent).join(',') === 'pump-1,pump-2,pump-3'"
    )
    # Light theme, for the screenshot of a bright room.
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    screenshot(page, "fleet-light")
    # A tablet held upright: the page itself never scrolls sideways (wide tables do, inside).
    page.set_viewport_size({"width": 820, "height": 1180})
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 820
    screenshot(page, "fleet-tablet")


def _open_series(page: Any, plant: Plant, name: str) -> None:
    page.goto(f"{plant.base}/console/series/{plant.series[name]}")
    page.wait_for_selector("#charts[aria-busy=false] .chart[data-channel=score] canvas")


def test_series_chart_decimates_and_brush_labels_a_range(plant: Plant, context: Any) -> None:
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["operator"])
    _open_series(page, plant, "pump-1")
    assert page.locator(".chart").count() == 4  # three channels and the score
    assert page.locator("#charts").get_attribute("data-points") == "6000"
    screenshot(page, "series", full_page=True)

    # The server sends at most two points per pixel column, whatever the range holds.
    chart = page.request.get(
        f"{plant.base}/console/api/series/{plant.series['pump-1']}/chart?width=200"
    ).json()
    assert chart["points"] == 6000
    for channel in chart["channels"]:
        assert 200 <= len(channel["t"]) <= 400
    assert chart["threshold"] > 0
    assert len(chart["scores"]["t"]) > 100
    assert [label["label"] for label in chart["labels"]] == ["bearing_wear"]

    # Zoom: drag across the first chart; the server then sends the narrower range.
    over = page.locator(".chart[data-channel=vibration] .u-over")
    box = over.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.60, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=5)
    page.mouse.up()
    page.wait_for_function("() => Number(document.getElementById('charts').dataset.points) < 2000")
    zoomed = page.locator("#range-text").inner_text()
    page.click("#pan-left")
    range_text = "() => document.getElementById('range-text').textContent"
    page.wait_for_function(f"{range_text} !== {zoomed!r}")
    assert int(page.locator("#charts").get_attribute("data-points")) < 2000  # same span, earlier

    # Label mode: brush a range and label it as a missed fault.
    before = len(plant.labels(plant.series["pump-1"]))
    page.check("#label-mode")
    over = page.locator(".chart[data-channel=vibration] .u-over")
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, y, steps=5)
    page.mouse.up()
    page.select_option("#label-class", "false_negative")
    page.click("#label-submit")
    page.wait_for_selector("#toast .msg:has-text('Labelled')")
    labels = plant.labels(plant.series["pump-1"])
    assert len(labels) == before + 1
    assert labels[-1]["label"] == "false_negative"


def test_models_page_trains_with_live_progress(plant: Plant, context: Any) -> None:
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["operator"])
    page.goto(f"{plant.base}/console/models?series_id={plant.series['pump-1']}")
    assert page.locator("tr[data-version]").count() >= 1
    screenshot(page, "models")
    # (A retrain the earlier labels armed may be running: the button waits for it.)
    page.click("#train-now", timeout=120_000)
    page.wait_for_selector("#train-status:not([hidden])")
    # The bar follows GET /v1/jobs/{id} until the job ends; then the page shows the version.
    page.wait_for_selector("#train-status[data-status=succeeded]", timeout=120_000)
    page.wait_for_load_state("load")
    page.wait_for_function("() => document.querySelectorAll('tr[data-version]').length >= 2")
    # Activate or roll back: the one button of a version that is not active.
    button = page.locator("button.activate").first
    version = int(button.get_attribute("data-version"))
    button.click()
    page.wait_for_selector(f'tr[data-version="{version}"] .status-healthy')
    models = plant.api("GET", f"/v1/series/{plant.series['pump-1']}/models").json()
    assert models["active_version"] == version


def test_read_only_key_sees_but_cannot_write(plant: Plant, context: Any) -> None:
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["reader"])
    assert page.locator(".who").inner_text().endswith("read only")
    _open_series(page, plant, "pump-1")
    assert page.locator("#label-form").count() == 0  # no labelling for a read key
    page.goto(f"{plant.base}/console/models?series_id={plant.series['pump-1']}")
    assert page.locator("#train-now").count() == 0
    assert page.locator("button.activate").count() == 0

    # A forged write, with the session cookie and a valid CSRF token, is still refused.
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    forged = page.request.post(
        f"{plant.base}/v1/labels",
        headers={"X-CSRF-Token": csrf},
        data={
            "series_id": plant.series["pump-1"],
            "start": T0_US / 1e6,
            "end": T0_US / 1e6 + 60,
            "label": "false_negative",
        },
    )
    assert forged.status == 403, forged.text()
    assert "label" in forged.json()["detail"]
    train = page.request.post(
        f"{plant.base}/v1/series/{plant.series['pump-1']}/train", headers={"X-CSRF-Token": csrf}
    )
    assert train.status == 403


def test_writes_without_the_csrf_token_are_refused(plant: Plant, context: Any) -> None:
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["operator"])
    body = {
        "series_id": plant.series["pump-2"],
        "start": T0_US / 1e6 + 10,
        "end": T0_US / 1e6 + 20,
        "label": "cleaning",
    }
    missing = page.request.post(f"{plant.base}/v1/labels", data=body)
    assert missing.status == 403
    assert "CSRF" in missing.json()["detail"]
    wrong = page.request.post(
        f"{plant.base}/v1/labels", data=body, headers={"X-CSRF-Token": "0" * 64}
    )
    assert wrong.status == 403
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    good = page.request.post(f"{plant.base}/v1/labels", data=body, headers={"X-CSRF-Token": csrf})
    assert good.status == 201, good.text()
    # Sign-out is a write too.
    out = page.request.post(f"{plant.base}/console/logout", form={"csrf_token": "nope"})
    assert out.status == 403


def test_restricted_key_sees_only_its_series(plant: Plant, context: Any) -> None:
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["restricted"])
    rows = page.locator("#fleet-body tr[data-series]")
    assert [row.get_attribute("data-series") for row in rows.all()] == [str(plant.series["pump-3"])]
    other = page.request.get(f"{plant.base}/console/api/series/{plant.series['pump-1']}/chart")
    assert other.status == 403
    page.goto(f"{plant.base}/console/series/{plant.series['pump-1']}")
    assert "may not use series" in page.content()


def test_sign_in_refuses_a_bad_key_and_pages_need_a_session(plant: Plant, context: Any) -> None:
    page = context.new_page()
    page.goto(f"{plant.base}/console/fleet")
    assert page.url == f"{plant.base}/console/login"
    page.fill("#api_key", "vgl_not-a-key")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "unknown, revoked or expired key"
    screenshot(page, "login")
    # The cookie is HttpOnly and SameSite=Strict: scripts never see the session.
    sign_in(page, plant.base, plant.keys["operator"])
    cookie = next(c for c in context.cookies() if c["name"] == "vigil_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert plant.keys["operator"] not in cookie["value"]
    assert page.evaluate("document.cookie") == ""


def test_no_page_loads_anything_from_another_origin(plant: Plant, context: Any) -> None:
    seen: list[str] = []
    context.on("request", lambda request: seen.append(request.url))
    page = context.new_page()
    sign_in(page, plant.base, plant.keys["operator"])
    pump1 = plant.series["pump-1"]
    for path in (
        "/console/fleet",
        f"/console/series/{pump1}",
        "/console/alarms",
        f"/console/models?series_id={pump1}",
        f"/console/feedback?series_id={pump1}",
    ):
        page.goto(plant.base + path)
        page.wait_for_load_state("networkidle")
    assert len(seen) > 10
    foreign = [
        url for url in seen if not (url.startswith(plant.base + "/") or url.startswith("data:"))
    ]
    assert foreign == []
