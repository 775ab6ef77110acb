"""The clinician's page after a result: record the confirmed diagnosis (the API's idempotency
and audit rules hold, errors are shown and record nothing, the live figures on /monitoring
follow), and print the result. Real headless Chromium, the real gateway and Triton, a real
photo."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contracts.labels import CLASS_NAMES
from contracts.repository import MODEL_CARD_FILE
from tests.fixtures_serving import API_KEY, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def _wait(browser: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _confirm(browser: Any, diagnosis: str, confirmation: str) -> str:
    """Choose and send; the status line once the answer is shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "diagnosis")).select_by_value(diagnosis)
    Select(browser.find_element(By.ID, "confirmation")).select_by_value(confirmation)
    status = browser.find_element(By.ID, "feedback-status")
    browser.execute_script("arguments[0].textContent = ''", status)
    browser.find_element(By.ID, "feedback-submit").click()
    _wait(browser, lambda _: status.text and status.text != "recording…")
    return str(status.text)


def _upload(browser: Any, photo: Path, site: str) -> Any:
    """Type the key, choose the photo and the site, classify; the result section once shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    key = browser.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys(API_KEY)
    browser.find_element(By.ID, "image").send_keys(str(photo))
    Select(browser.find_element(By.ID, "body-location")).select_by_value(site)
    browser.find_element(By.ID, "submit").click()
    result = browser.find_element(By.ID, "result")
    _wait(browser, lambda _: result.is_displayed() and result.get_attribute("data-prediction-id"))
    return result


def test_clinician_confirms_the_diagnosis_then_prints_the_result(
    browser: Any, monitored: Any, real_lesions_dir: Path, lesion_rows: list[dict]
) -> None:
    from selenium.webdriver.common.by import By

    gateway = monitored()
    row = next(r for r in lesion_rows if r["dx"] == "mel")
    photo = real_lesions_dir / f"{row['image_id']}.jpg"
    browser.get(gateway.url + "/")
    feedback = browser.find_element(By.ID, "feedback")
    assert not feedback.is_displayed()  # nothing to confirm before a result
    result = _upload(browser, photo, row["localization"])
    assert feedback.is_displayed()
    pid = result.get_attribute("data-prediction-id")
    # Where the model looked (asked by default): the top class's map over the photo, drawn by
    # the page from the stored answer's grid, its hottest cell where the grid's is.
    with gateway.client() as c:
        explanation = c.get(f"/v1/predictions/{pid}").json()["explanation"]
    assert explanation["available"], explanation
    canvas = browser.find_element(By.ID, "explain-canvas")
    _wait(browser, lambda _: canvas.get_attribute("data-peak"))
    top = explanation["maps"][0]
    grid = np.array(top["map"])
    assert canvas.get_attribute("data-code") == top["code"]
    peak = tuple(int(v) for v in canvas.get_attribute("data-peak").split(","))
    assert grid[peak] == grid.max() == 1.0
    assert canvas.size["width"] > 100 and browser.find_element(By.ID, "explain-box").is_displayed()
    # One click from the result to the card of the version that produced it.
    with gateway.client() as c:
        version = c.get(f"/v1/predictions/{pid}").json()["model"]["version"]
    link = browser.find_element(By.ID, "model-card-link")
    assert link.get_attribute("href") == f"{gateway.url}/model-cards/{version}"
    card = gateway.settings.model_repository / "skin_lesion" / version / MODEL_CARD_FILE
    card.write_text(f"# Model card: skin_lesion version {version}\n\n| a | b |\n|---|---|\n")
    try:
        here = browser.current_window_handle
        link.click()
        _wait(browser, lambda _: len(browser.window_handles) == 2)
        browser.switch_to.window(next(h for h in browser.window_handles if h != here))
        heading = browser.find_element(By.CSS_SELECTOR, "#model-card h1").text
        assert heading == f"Model card: skin_lesion version {version}"
        browser.close()
        browser.switch_to.window(here)
    finally:
        card.unlink()
    assert feedback.get_attribute("data-prediction-id") == pid

    def stored() -> dict[str, Any]:
        with gateway.client() as c:
            answer: dict[str, Any] = c.get(f"/v1/predictions/{pid}").json()
        return answer

    # The options are the API's classes and confirmation methods, in words.
    options = {
        o.get_attribute("value"): o.text
        for o in browser.find_elements(By.CSS_SELECTOR, "#diagnosis option")
    }
    assert options.pop("") and options == {c: f"{n} ({c})" for c, n in CLASS_NAMES.items()}

    text = _confirm(browser, "mel", "histo")
    assert text == (
        f"Recorded: {CLASS_NAMES['mel']} (mel), confirmed by histopathology (histo) (revision 1)."
    )
    first = stored()
    assert (first["feedback"]["diagnosis"], first["feedback"]["confirmation"]) == ("mel", "histo")
    # The same again changes nothing (200); a correction becomes revision 2, the first kept.
    assert _confirm(browser, "mel", "histo").startswith(f"Already recorded: {CLASS_NAMES['mel']}")
    assert len(stored()["feedback_history"]) == 1
    assert _confirm(browser, "nv", "follow_up").endswith("(revision 2).")
    history = stored()["feedback_history"]
    assert [h["diagnosis"] for h in history] == ["mel", "nv"]

    # Errors are shown on the page and record nothing.
    browser.execute_script(
        "const s = document.getElementById('diagnosis');"
        "s.append(new Option('flu', 'flu')); s.value = 'flu';"
    )
    status = browser.find_element(By.ID, "feedback-status")
    browser.find_element(By.ID, "feedback-submit").click()
    _wait(browser, lambda _: status.text.startswith("Not recorded"))
    assert status.text.startswith("Not recorded: 422: diagnosis:")
    assert "error" in status.get_attribute("class")
    browser.execute_script("document.getElementById('feedback').dataset.predictionId = 'nope'")
    assert _confirm(browser, "bkl", "consensus").startswith("Not recorded: 404: no prediction")
    assert len(stored()["feedback_history"]) == 2 and stored()["feedback"]["diagnosis"] == "nv"
    browser.execute_script(f"document.getElementById('feedback').dataset.predictionId = '{pid}'")

    # The live figures count the confirmed prediction (the API and the monitoring page).
    with gateway.client() as c:
        performance = c.get("/v1/monitoring/performance").json()
    (version,) = performance["versions"]
    assert version["overall"]["confirmed"] == 1 and version["overall"]["predictions"] == 1
    browser.get(gateway.url + "/monitoring")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "load").click()
    _wait(browser, lambda _: browser.find_elements(By.CSS_SELECTOR, "#performance tbody tr"))
    overall = browser.find_elements(By.CSS_SELECTOR, "#performance tbody tr[data-week='all']")
    cells = [td.text for td in overall[0].find_elements(By.TAG_NAME, "td")]
    assert cells[2:4] == ["1", "1"]  # predictions, confirmed

    # Printing: upload again, then the page as a printer renders it.
    browser.get(gateway.url + "/")
    result = _upload(browser, photo, row["localization"])
    printed_id = result.get_attribute("data-prediction-id")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        shown = {
            name: browser.find_element(By.ID, name).is_displayed()
            for name in (
                "predict-form",
                "feedback",
                "print",
                "result",
                "result-photo",
                "printed-at",
            )
        }
        assert shown == {
            "predict-form": False,
            "feedback": False,
            "print": False,
            "result": True,
            "result-photo": True,
            "printed-at": True,
        }
        photo = browser.find_element(By.ID, "result-photo")
        assert browser.execute_script("return arguments[0].naturalWidth", photo) == 600
        kept = result.text
        with gateway.client() as c:
            answer = c.get(f"/v1/predictions/{printed_id}").json()
        assert printed_id in kept and f"version {answer['model']['version']}" in kept
        assert answer["referral"]["reason"] in kept and "not a diagnosis" in kept
        assert answer["ranking"][0]["name"] in kept
        pdf = base64.b64decode(browser.execute_cdp_cmd("Page.printToPDF", {})["data"])
        assert pdf.startswith(b"%PDF")
        out = ROOT / ".cache" / "web"
        out.mkdir(parents=True, exist_ok=True)
        (out / "printed-result.pdf").write_bytes(pdf)
        browser.save_screenshot(str(out / "printed-result.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
