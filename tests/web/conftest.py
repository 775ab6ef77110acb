"""Browser fixtures: Debian's headless Chromium driven by Selenium, plus the monitoring
fixtures (a gateway that sees the served version's reference statistics)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.monitoring.fixtures import (  # noqa: F401 - fixtures, registered by import
    ham_datamodule,
    ham_split,
    monitored,
    monitored_repository,
)

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# This machine's network is closed: without these Chromium keeps opening refused connections
# (see ../shared/notes/machine.md).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """A headless Chromium session (Selenium WebDriver)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "the browser tests need Debian's Chromium and its driver: "
            "`apt-get install -y chromium chromium-driver` (`make test` installs them as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="skin-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
