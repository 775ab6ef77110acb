"""The clinician's page with a photo the gate refuses: the reason, as a clear message, instead of
a ranking; in headless Chromium against the real gateway and Triton."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from serving.db.tables import Refusal
from tests import gate_images as gi
from tests.fixtures_serving import API_KEY

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def _submit(browser: Any, url: str | None, photo: Path) -> None:
    """Fill the form and send it (on a freshly loaded page when ``url`` is given)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    if url is not None:
        browser.get(url + "/")
        key = browser.find_element(By.ID, "api-key")
        key.clear()
        key.send_keys(API_KEY)
    browser.find_element(By.ID, "image").send_keys(str(photo))
    Select(browser.find_element(By.ID, "body-location")).select_by_value("back")
    browser.find_element(By.ID, "submit").click()


def _wait(browser: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


@pytest.mark.parametrize("mode", ["reject", "flag"])
def test_a_refused_photo_shows_its_reason_not_a_ranking(
    browser: Any,
    make_gated_gateway: Any,
    real_lesions_dir: Path,
    tmp_path: Path,
    mode: str,
) -> None:
    """A black frame (a covered lens) gets the sentence the gateway recorded for it and its
    reason code, and no ranking, whether the gateway answers 422 (reject) or 201 with the
    ranking withheld (flag); a real photo afterwards gets its ranking and no refusal."""
    from selenium.webdriver.common.by import By

    live = make_gated_gateway(f"sqlite:///{tmp_path / 'page.db'}", refusal_mode=mode)
    frame = tmp_path / "black.jpg"
    frame.write_bytes(gi.encode(gi.black_frame()))

    _submit(browser, live.url, frame)
    refusal = browser.find_element(By.ID, "refusal")
    _wait(browser, lambda _: refusal.is_displayed())
    with live.engine.connect() as conn:
        record = conn.execute(select(Refusal.id, Refusal.message, Refusal.mode)).one()
    assert record.mode == mode and live.count() == 0
    assert refusal.get_attribute("data-code") == "uniform"
    assert refusal.get_attribute("data-refusal-id") == record.id
    assert browser.find_element(By.ID, "refusal-message").text == record.message
    assert "nearly uniform" in record.message
    assert "No diagnosis" in refusal.text and "uniform" in refusal.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    status = browser.find_element(By.ID, "status")
    assert status.text == "refused: no diagnosis" and "error" not in status.get_attribute("class")

    photo = sorted(real_lesions_dir.glob("*.jpg"))[0]
    _submit(browser, None, photo)  # the same page: the refusal gives way to the answer
    result = browser.find_element(By.ID, "result")
    _wait(browser, lambda _: result.is_displayed() and result.get_attribute("data-prediction-id"))
    assert not browser.find_element(By.ID, "refusal").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")) > 0
    assert live.count() == 1
