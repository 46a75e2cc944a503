"""A real headless Chromium for the annotator's end-to-end tests (Debian's ``chromium`` driven by
its ``chromium-driver`` through Selenium; nothing is downloaded at run time).

Where they are missing the tests are skipped with the reason in pytest's summary (``-ra``), never
silently: ``make test`` installs both on Debian hosts when it runs as root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = ("Debian's chromium and chromium-driver are not installed, so the browser tests cannot run "
           "(`make test` installs them as root on Debian: apt-get install chromium chromium-driver)")

needs_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=MISSING)


def start_chromium(profile: str | Path, width: int = 1400, height: int = 800):
    """Headless Chromium with its profile in ``profile`` (a test's temporary folder, not /tmp)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
