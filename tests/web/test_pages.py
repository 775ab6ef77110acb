"""The clinician's page and the monitoring page: served as files, then driven in a real
headless Chromium against the real gateway and Triton with a real photo."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from contracts.labels import BODY_SITES, SEXES
from serving.app import create_app
from serving.settings import Settings
from serving.web import STATIC
from tests.fixtures_serving import API_KEY
from tests.monitoring.helpers import site_mix_sample, upload_stream


class Options(HTMLParser):
    """The option values of each <select>, and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.selects: dict[str, list[str]] = {}
        self.links: list[str] = []
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "select":
            self._current = a["id"]
            self.selects[self._current] = []
        elif tag == "option" and self._current and a.get("value") is not None:
            self.selects[self._current].append(a["value"])
        self.links += [a[k] for k in ("src", "href") if k in a]

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._current = None


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("pages")
    settings = Settings(
        allow_no_auth=True,
        database_url=f"sqlite:///{tmp / 'p.db'}",
        triton_url="127.0.0.1:9",  # the pages need no model
        drift_refresh_s=0,
    )
    with TestClient(create_app(settings)) as client:
        out = {}
        for path in ("/", "/monitoring"):
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            out[path] = r.text
        parser = Options()
        parser.feed(out["/"] + out["/monitoring"])
        for link in parser.links:
            assert client.get(link).status_code == 200, link
    return out


def test_the_form_offers_the_api_contract(pages: dict[str, str]) -> None:
    parser = Options()
    parser.feed(pages["/"])
    assert parser.selects["body-location"] == ["", *BODY_SITES]  # a placeholder, then the 15
    assert parser.selects["sex"] == list(SEXES)


def test_pages_load_nothing_from_outside(pages: dict[str, str]) -> None:
    """No CDN, no external font: the clinic may be offline, and nothing should leak out."""
    parser = Options()
    parser.feed(pages["/"] + pages["/monitoring"])
    assert parser.links and all(link.startswith("/") for link in parser.links), parser.links
    for path in STATIC.iterdir():
        text = path.read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)
        # Responses are rendered with textContent only: no HTML is parsed from the API.
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, path.name
        assert "<script>" not in text, path.name  # no inline scripts (a CSP can forbid them)


def _wait(browser: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _type_key(browser: Any, key: str, remember: bool) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    box = browser.find_element(By.ID, "remember-key")
    if box.is_selected() != remember:
        box.click()


@pytest.mark.slow
@pytest.mark.triton
def test_clinician_uploads_a_real_photo_and_reads_the_answer(
    browser: Any,
    monitored: Any,
    real_lesions_dir: Path,
    lesion_rows: list[dict],
    ham_split: dict[str, pd.DataFrame],
    monitored_repository: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    gateway = monitored()
    row = next(r for r in lesion_rows if r["dx"] == "mel")
    photo = real_lesions_dir / f"{row['image_id']}.jpg"

    browser.get(gateway.url + "/")
    _type_key(browser, "wrong-key-" + "z" * 30, remember=False)
    browser.find_element(By.ID, "image").send_keys(str(photo))
    Select(browser.find_element(By.ID, "body-location")).select_by_value(row["localization"])
    browser.find_element(By.ID, "submit").click()
    status = browser.find_element(By.ID, "status")
    _wait(browser, lambda _: "401" in status.text)
    assert "invalid API key" in status.text and gateway.count() == 0

    _type_key(browser, API_KEY, remember=True)
    browser.find_element(By.ID, "age").send_keys(row["age"].split(".")[0])
    Select(browser.find_element(By.ID, "sex")).select_by_value(row["sex"])
    browser.find_element(By.ID, "consent").click()
    browser.find_element(By.ID, "submit").click()
    result = browser.find_element(By.ID, "result")
    _wait(browser, lambda _: result.is_displayed() and result.get_attribute("data-prediction-id"))
    prediction_id = result.get_attribute("data-prediction-id")

    # What the page shows is the answer the gateway stored for this upload.
    with gateway.client() as c:
        stored = c.get(f"/v1/predictions/{prediction_id}").json()
    assert gateway.count() == 1 and stored["image"]["stored"] is True
    assert stored["body_location"] == row["localization"] and stored["age"] == int(
        float(row["age"])
    )
    assert stored["image"]["width"] == 600  # the full-size photo went up, not a copy
    shown = browser.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")
    assert [r.get_attribute("data-code") for r in shown] == [x["code"] for x in stored["ranking"]]
    probabilities = [
        float(
            r.find_element(By.CSS_SELECTOR, "[data-probability]").get_attribute("data-probability")
        )
        for r in shown
    ]
    assert probabilities == pytest.approx([x["probability"] for x in stored["ranking"]])
    # The class the version names is said in words and marked in the ranking.
    named = browser.find_element(By.ID, "named-class")
    assert f"({stored['top_class']})" in named.text
    assert named.get_attribute("data-rule") == stored["decision"]["rule"]
    marked = [r.get_attribute("data-code") for r in shown if r.get_attribute("data-named")]
    assert marked == [stored["top_class"]]
    excluded = [
        e.get_attribute("data-code")
        for e in browser.find_elements(By.CSS_SELECTOR, "#excluded li[data-code]")
    ]
    assert excluded == [e["code"] for e in stored["excluded"]]
    referral = browser.find_element(By.ID, "referral")
    assert referral.get_attribute("data-refer") == str(stored["referral"]["refer"]).lower()
    assert stored["referral"]["reason"] in referral.text
    use = browser.find_element(By.ID, "clinical-use")  # an image-only version here
    assert stored["clinical"]["used"] is False and use.get_attribute("data-used") == "false"
    assert "photo alone" in use.text

    # The key stays for this browser session only when asked: a reload keeps it.
    browser.refresh()
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == API_KEY
    assert browser.execute_script("return localStorage.length") == 0

    # The monitoring page, once the window holds enough predictions to judge.
    meta = json.loads((monitored_repository / "skin_lesion" / "1" / "metadata.json").read_text())
    counts = dict(
        zip(BODY_SITES, meta["reference"]["features"]["body_site"]["counts"], strict=True)
    )
    upload_stream(gateway, site_mix_sample(ham_split["val"], counts, 60, seed=4))
    browser.get(gateway.url + "/monitoring")  # the remembered key loads it at once
    dashboard = browser.find_element(By.ID, "dashboard")
    _wait(browser, lambda _: dashboard.is_displayed())
    with gateway.client() as c:
        report = c.get("/v1/monitoring").json()
        timeline = c.get("/v1/monitoring/timeline", params={"days": 30, "bucket": "day"}).json()
    assert report["window"]["size"] == 61
    rows = {
        r.get_attribute("data-feature"): r
        for r in browser.find_elements(By.CSS_SELECTOR, "#features tbody tr")
    }
    assert set(rows) == set(report["features"])
    for name, f in report["features"].items():
        psi_text = rows[name].find_element(By.CSS_SELECTOR, ".psi").text
        assert psi_text == ("\N{EN DASH}" if f["psi"] is None else f"{f['psi']:.3f}"), name
        assert rows[name].find_element(By.CSS_SELECTOR, ".status").text == f["status"]
    box = browser.find_element(By.ID, "retraining")
    assert box.get_attribute("data-recommended") == str(report["retraining"]["recommended"]).lower()

    charts = {
        f.get_attribute("data-chart"): f for f in browser.find_elements(By.CSS_SELECTOR, "figure")
    }
    psi_chart = next(f for title, f in charts.items() if title.startswith("PSI per day"))
    plotted = {
        (c.get_attribute("data-series"), round(float(c.get_attribute("data-value")), 6))
        for c in psi_chart.find_elements(By.CSS_SELECTOR, "circle")
    }
    expected = {
        (name, round(v, 6))
        for p in timeline["points"]
        for name, v in p["psi"].items()
        if v is not None
    }
    assert plotted == expected  # every computed PSI drawn, nothing else
    assert expected or len(timeline["points"]) > 1  # (uploads that straddle midnight UTC)
    bound = psi_chart.find_element(By.CSS_SELECTOR, "line[data-hline]")
    assert bound.get_attribute("data-hline") == f"bound {report['bounds']['psi']}"
    bars = [t for t in charts if t.startswith("brightness (n = 61")]
    assert bars, list(charts)
    perf_rows = browser.find_elements(By.CSS_SELECTOR, "#performance tbody tr[data-week='all']")
    assert [r.get_attribute("data-version") for r in perf_rows] == ["1"]
