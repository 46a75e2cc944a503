"""End to end in a real headless Chromium: an expert answers ``xal run --oracle web``'s batches.

The run is a real ``xal run`` process (tiny synthetic benchmark, models trained for real); the
page is driven with the keyboard and the mouse as a person would; the answers are read back from
the run's SQLite ledger. Set ``XAL_SCREENSHOT=path.png`` to keep a screenshot of the page showing a
Grad-CAM overlay and a drawn box (the one in ``docs/`` was made this way).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.web.browser import drag_through, needs_chromium, start_chromium
from tests.web.runs import TINY_CLI, build_dicom_run
from xal_core.data import PoolStore
from xal_core.loop.annotations import BoxRoi, MaskRoi
from xal_core.loop.ledger import Arm, Ledger

ROOT = Path(__file__).resolve().parents[2]
pytestmark = needs_chromium


def _cli(initial: int, per_round: int) -> list[str]:
    args = list(TINY_CLI)
    args[args.index("--initial") + 1] = str(initial)
    args[args.index("--per-round") + 1] = str(per_round)
    return args


@pytest.fixture
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_an_expert_answers_in_the_browser_and_the_run_goes_on(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "xal_cli.main", "run", "--out", str(run_dir), "--oracle", "web",
             "--annotate-listen", "127.0.0.1:0", "--annotator", "dr-e2e", *_cli(initial=4, per_round=3)],
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = _wait(lambda: next((line.split()[-1] for line in log.read_text().splitlines()
                                  if line.startswith("the annotator page is at")), None), 180, "the page's address")
        pool = PoolStore.open(run_dir / "data" / "pool")
        browser.get(url)
        progress = lambda: browser.find_element(By.ID, "progress").text  # noqa: E731
        _wait(lambda: progress() == "0 of 4 done", 30, "the first batch")

        def current() -> int:
            return int(browser.find_element(By.CSS_SELECTOR, "#item-list li.current").get_attribute("data-item"))

        def press(key: str) -> None:
            ActionChains(browser).send_keys(key).perform()

        def key_of_truth(item: int) -> str:
            return str(int(pool.oracle_labels([item])[0]) + 1)

        def wait_image(item: int) -> None:
            _wait(lambda: browser.execute_script("return state.loadedItem") == item and
                  browser.execute_script("return state.pixels !== null"), 30, f"item {item}'s image")

        answered: dict[int, str] = {}
        # 1: a box drawn with the mouse over image pixels 3..11 × 3..8 (all it touches), then its class
        boxed = current()
        wait_image(boxed)
        drag_through(browser, [(3.3, 3.3), (11.6, 8.6)])
        drag_through(browser, [(20.5, 20.5), (24.5, 26.5)])  # a second box, taken back with U
        assert browser.execute_script("return state.drawing.boxes.length") == 2
        press("u")
        press(key_of_truth(boxed))
        answered[boxed] = "box"
        _wait(lambda: progress() == "1 of 4 done", 30, "the first answer")
        # 2: "no finding" then its class
        empty = _wait(lambda: current() if current() not in answered else None, 10, "the next item")
        wait_image(empty)
        press("n")
        press(key_of_truth(empty))
        answered[empty] = "no finding"
        _wait(lambda: progress() == "2 of 4 done", 30, "the second answer")
        # 3: the class alone (no ROI drawn)
        plain = _wait(lambda: current() if current() not in answered else None, 10, "the next item")
        press(key_of_truth(plain))
        answered[plain] = "none"
        _wait(lambda: progress() == "3 of 4 done", 30, "the third answer")

        browser.refresh()  # a reload shows what is recorded, and asks only for the rest
        _wait(lambda: progress() == "3 of 4 done", 30, "the page after a reload")
        done = {int(li.get_attribute("data-item")) for li in browser.find_elements(By.CSS_SELECTOR, "#item-list li.done")}
        assert done == set(answered)
        last = current()
        assert last not in answered
        with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
            recorded = {item: ledger.annotation(item) for item in [*answered, last]}
        assert recorded[last] is None
        assert recorded[boxed].roi == BoxRoi(((3.0, 3.0, 12.0, 9.0),))
        assert recorded[empty].roi == BoxRoi(())
        assert recorded[plain].roi is None
        for item in answered:
            assert recorded[item].label == int(pool.oracle_labels([item])[0]) and recorded[item].annotator == "dr-e2e"

        # the batch's last item is answered in another tab first: this page says so and records nothing;
        # that answer completes the batch, so the run trains round 0, acquires round 1, and the page picks it up
        wait_image(last)
        other_tab = httpx.post(f"{url}api/items/{last}/answer", json={"label_index": int(pool.oracle_labels([last])[0])})
        assert other_tab.status_code == 200
        press("1" if key_of_truth(last) == "2" else "2")  # a different answer, too late
        message = browser.find_element(By.ID, "message")
        _wait(lambda: message.is_displayed() and "answered already" in message.text, 30, "the other tab's message")
        _wait(lambda: progress() == "0 of 3 done", 240, "the run's next batch on the page")
        second = current()
        wait_image(second)
        press("c")  # the Grad-CAM is shown on request only
        cam = browser.find_element(By.ID, "cam")
        _wait(lambda: browser.find_element(By.ID, "cam-legend").is_displayed() and
              browser.execute_script("return arguments[0].naturalWidth", cam) == 32,
              30, "the Grad-CAM overlay of a round-1 item")
        drag_through(browser, [(8.5, 5.5), (17.5, 12.5)])
        if os.environ.get("XAL_SCREENSHOT"):
            browser.save_screenshot(os.environ["XAL_SCREENSHOT"])
        press(key_of_truth(second))
        _wait(lambda: progress() == "1 of 3 done", 30, "the boxed round-1 answer")
        skipped = _wait(lambda: current() if current() != second else None, 10, "the next item")
        press("s")  # skip: the item stays pending, the page moves on
        brushed = _wait(lambda: current() if current() not in (second, skipped) else None, 10, "the item after a skip")
        wait_image(brushed)
        press("b")  # the pool's ROIs are masks: a brush
        browser.execute_script("document.getElementById('brush-size').value = '40'")
        drag_through(browser, [(16.5, 16.5), (20.5, 16.5), (20.5, 19.5)])
        press(key_of_truth(brushed))
        _wait(lambda: progress() == "2 of 3 done", 30, "the brushed answer")
        assert current() == skipped  # the skipped item is still asked for
        press(key_of_truth(skipped))
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
        arm = Arm("entropy", 0)
        assert len(ledger.annotations(arm)) == 7 and not ledger.pending(arm)
        assert [r.round for r in ledger.rounds(arm)] == [0, 1]
        assert isinstance(ledger.annotation(second).roi, BoxRoi) and len(ledger.annotation(second).roi.boxes) == 1
        brush = ledger.annotation(brushed).roi
        assert isinstance(brush, MaskRoi) and 10 < int(brush.to_mask().sum()) < 200
        assert ledger.annotation(skipped).roi is None and ledger.annotation(last).annotator == "dr-e2e"


def test_a_dicom_item_is_shown_at_its_own_resolution_with_window_and_level(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from xal_core.loop.oracle import AnnotationDesk
    from xal_web import AnnotationServer, build_app

    run_dir = build_dicom_run(tmp_path)
    with Ledger.open(run_dir / "ledger.sqlite") as ledger:
        desk = AnnotationDesk(ledger, PoolStore.open(run_dir / "data" / "pool"))
        with AnnotationServer(build_app(desk, run_dir), "127.0.0.1:0") as server:
            browser.get(server.url)
            shown = lambda: browser.find_element(By.ID, "shown").text  # noqa: E731
            _wait(lambda: shown() == "original 80×96", 30, "the DICOM at its own resolution")
            pixel = "return Array.from(document.getElementById('image').getContext('2d')" \
                    ".getImageData(40, 48, 1, 1).data.slice(0, 3))"
            assert browser.execute_script("return [document.getElementById('image').width, " \
                                          "document.getElementById('image').height]") == [80, 96]
            before = browser.execute_script(pixel)
            width = browser.find_element(By.ID, "window-width")
            narrower = float(width.get_attribute("value")) / 8  # a narrower window: more contrast
            width.clear()
            width.send_keys(f"{narrower}\t")
            _wait(lambda: browser.execute_script(pixel) != before, 10, "the narrower window on the image")
            browser.execute_script("document.activeElement.blur()")  # keys typed into a field are the field's
            ActionChains(browser).send_keys("o").perform()
            _wait(lambda: shown() == "pool image 32×32", 10, "the pool image after O")
