"""The monitoring page shows what each feature is compared with, the capture baseline (or how
to freeze one) and the refused uploads per day: a real headless Chromium against the real
gateway and Triton, fed the real full-size photos and refused copies of them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from serving.monitoring import FREEZE_COMMAND
from tests.fixtures_serving import API_KEY
from tests.monitoring.helpers import post

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def _wait(browser: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _small(path: Path) -> bytes:
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize((200, 150), Image.Resampling.LANCZOS).save(out, "JPEG")
    return out.getvalue()


def _load(browser: Any, url: str) -> dict[str, Any]:
    """Open the page with the key typed, wait for the dashboard; its elements by id."""
    from selenium.webdriver.common.by import By

    browser.get(url + "/monitoring")
    key = browser.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys(API_KEY)
    browser.find_element(By.ID, "load").click()
    dashboard = browser.find_element(By.ID, "dashboard")
    _wait(browser, lambda _: dashboard.is_displayed())
    _wait(browser, lambda b: b.find_element(By.ID, "status").text.startswith("updated"))
    return {
        "baseline": browser.find_element(By.ID, "baseline"),
        "features": {
            r.get_attribute("data-feature"): r
            for r in browser.find_elements(By.CSS_SELECTOR, "#features tbody tr")
        },
        "refusals": browser.find_elements(By.CSS_SELECTOR, "#refusals tbody tr"),
        "total": browser.find_element(By.ID, "refusal-total").text,
        "charts": {
            f.get_attribute("data-chart"): f
            for f in browser.find_elements(By.CSS_SELECTOR, "#refusal-charts figure")
        },
    }


def test_monitoring_page_shows_the_baseline_and_the_refusal_rate(
    browser: Any, monitored: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    from selenium.webdriver.common.by import By

    gateway = monitored(drift_window=28, drift_min_window=25, quality_min_short_side=300)
    with gateway.client() as c:
        for row in lesion_rows:
            photo = (real_lesions_dir / f"{row['image_id']}.jpg").read_bytes()
            r = post(c, "/v1/predictions", data={"body_location": row["localization"]},
                     files={"image": ("x.jpg", photo, "image/jpeg")})  # fmt: skip
            assert r.status_code == 201, r.text
        for row in lesion_rows[:5]:  # shorter side 150 < 300: refused, too small
            small = _small(real_lesions_dir / f"{row['image_id']}.jpg")
            r = post(c, "/v1/predictions", data={"body_location": row["localization"]},
                     files={"image": ("x.jpg", small, "image/jpeg")})  # fmt: skip
            assert r.status_code == 422 and r.json()["code"] == "too_small", r.text
        report = c.get("/v1/monitoring").json()

    page = _load(browser, gateway.url)
    assert page["baseline"].get_attribute("data-frozen") == "false"
    assert FREEZE_COMMAND in page["baseline"].text
    width = page["features"]["image_width"]
    assert width.get_attribute("data-group") == "capture"
    assert width.find_element(By.CSS_SELECTOR, ".status").text == "no baseline"
    brightness = page["features"]["brightness"]
    assert (
        brightness.find_element(By.CSS_SELECTOR, ".compared").text
        == (report["features"]["brightness"]["compared_with"])
    )
    # One row per day with uploads, newest first (two if the uploads straddled midnight UTC).
    days = [d for d in report["refusals"]["per_day"] if d["predictions"] + d["refusals"]][::-1]
    assert [r.get_attribute("data-day") for r in page["refusals"]] == [d["day"] for d in days]
    for row, d in zip(page["refusals"], days, strict=True):
        assert float(row.get_attribute("data-rate")) == pytest.approx(d["rate"], abs=1e-6)
        assert row.find_element(By.CSS_SELECTOR, ".rate").text == f"{100 * d['rate']:.1f} %"
        reasons = ", ".join(f"{k} {n}" for k, n in d["by_reason"].items()) or "\N{EN DASH}"
        assert row.find_element(By.CSS_SELECTOR, ".reasons").text == reasons
    assert report["refusals"]["total"]["rate"] == pytest.approx(5 / 33, abs=1e-6)
    assert "5 uploads refused of 33 (15.2 %)" in page["total"]
    assert "too_small 5" in page["total"]
    chart = page["charts"]["Refusal rate per day"]
    plotted = sorted(
        float(c.get_attribute("data-value")) for c in chart.find_elements(By.CSS_SELECTOR, "circle")
    )
    assert plotted == pytest.approx(sorted(d["rate"] for d in days), abs=1e-6)

    with gateway.client() as c:
        frozen = post(c, "/v1/monitoring/baseline", json={"min_records": 28})
    assert frozen.status_code == 201, frozen.text
    page = _load(browser, gateway.url)
    assert page["baseline"].get_attribute("data-frozen") == "true"
    assert f"capture baseline {frozen.json()['id']}" in page["baseline"].text
    assert "from 28 predictions" in page["baseline"].text
    width = page["features"]["image_width"]
    assert width.find_element(By.CSS_SELECTOR, ".status").text == "ok"
    assert "capture baseline" in width.find_element(By.CSS_SELECTOR, ".compared").text
