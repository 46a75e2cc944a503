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


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition`` every 0.1 s until it returns something true; that value, or an AssertionError."""
    import time

    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # the page re-rendered that element meanwhile: look again
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def image_offset(driver, u: float, v: float) -> tuple[int, int]:
    """Where image pixel (u, v) of the shown view is on screen, as an offset from the centre of the
    ``#view`` canvas (what Selenium's ``move_to_element_with_offset`` takes)."""
    x, y = driver.execute_script(
        "const r = document.getElementById('view').getBoundingClientRect();"
        "return [state.zoom.x + arguments[0] * state.zoom.scale - r.width / 2,"
        "        state.zoom.y + arguments[1] * state.zoom.scale - r.height / 2];", u, v)
    return round(x), round(y)


def drag_through(driver, points: list[tuple[float, float]], *, hold: str | None = None):
    """Press the left button at the first image point, move straight to each next one (one pointer
    event per point, no intermediate ones: a fast hand), release; ``hold`` a key meanwhile."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    view = driver.find_element(By.ID, "view")
    chain = ActionChains(driver, duration=0)
    if hold:
        chain.key_down(hold)
    chain.move_to_element_with_offset(view, *image_offset(driver, *points[0])).click_and_hold()
    for u, v in points[1:]:
        chain.move_to_element_with_offset(view, *image_offset(driver, u, v))
    chain.release()
    if hold:
        chain.key_up(hold)
    chain.perform()


def press(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()
