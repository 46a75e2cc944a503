"""Issue 27 in a real headless Chromium: signing in, keys that act once, answers that can be
corrected, a server that dies, and a viewer fit for reading images (zoom and pan, source pixels,
preloading, compressed pixels, window/level, Grad-CAM on request, brush strokes, the done state).

The page is served by ``AnnotationServer`` in this process for a copy of a real run (``runs``), the
answers are read back from its ledger. Each test failed on the page before the issue was fixed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.web.browser import drag_through, image_offset, needs_chromium, press, start_chromium, wait_for
from tests.web.runs import build_dicom_run, build_runs, fresh_copy
from tests.web.test_api import TOKEN
from xal_core.data import PoolStore
from xal_core.loop.annotations import BoxRoi, MaskRoi
from xal_core.loop.ledger import Ledger
from xal_core.loop.oracle import AnnotationDesk
from xal_web import AnnotationServer, build_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    return build_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


class Page:
    """A run folder served on a real socket for the browser, and its ledger for the checks."""

    def __init__(self, run_dir: Path, *, token: str | None = None, run_waits: bool = False) -> None:
        self.run_dir = run_dir
        self.ledger = Ledger.open(run_dir / "ledger.sqlite")
        self.pool = PoolStore.open(run_dir / "data" / "pool")
        self.desk = AnnotationDesk(self.ledger, self.pool)
        waits = {"run_waits": True} if run_waits else {}
        app = build_app(self.desk, run_dir, token=token, annotator="dr-chromium", **waits)
        self.server = AnnotationServer(app, "127.0.0.1:0", has_token=token is not None).start()
        self.url = self.server.url

    def close(self) -> None:
        self.server.stop()
        self.ledger.close()

    def answered(self) -> dict[int, object]:
        return {item.item_id: item.answer for item in self.desk.batch() if item.answer is not None}


@pytest.fixture
def page(runs, tmp_path):
    served = Page(fresh_copy(runs[1], tmp_path / "run"))
    yield served
    served.close()


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def _current(browser) -> int:
    return browser.execute_script("return state.batch.items[state.index].item_id")


def _shown(browser, item: int | None = None) -> int:
    """Wait until an item's image is on screen; its id."""
    return wait_for(lambda: browser.execute_script(
        "return state.pixels !== null && state.loadedItem === state.batch.items[state.index].item_id"
        " ? state.loadedItem : null") if item is None or _current(browser) == item else None, 30, "the image")


def _canvas_pixel(browser, u: float, v: float) -> list[int]:
    """The RGB the screen shows at image pixel (u, v)."""
    return browser.execute_script(
        "const c = document.getElementById('view'); const r = window.devicePixelRatio || 1;"
        "const x = (state.zoom.x + arguments[0] * state.zoom.scale) * r, y = (state.zoom.y + arguments[1] * state.zoom.scale) * r;"
        "return Array.from(c.getContext('2d').getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3));", u, v)


# ------------------------------------------------------------------ 1: token sign-in through the form
def test_signing_in_through_the_form_with_a_token_and_out_again(runs, tmp_path, browser):
    from selenium.webdriver.common.by import By

    served = Page(fresh_copy(runs[1], tmp_path / "run"), token=TOKEN)
    try:
        browser.get(served.url)
        field = wait_for(lambda: browser.find_elements(By.NAME, "token"), 30, "the login form")[0]
        field.send_keys("not-the-token")
        field.submit()
        wait_for(lambda: browser.find_element(By.ID, "failed").is_displayed(), 30, "the wrong-token notice")
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(lambda: browser.find_elements(By.ID, "progress") and _text(browser, "progress") == "0 of 6 done",
                 30, "the batch after signing in")
        cookie = browser.get_cookie("xal_annotate_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie.get("expiry")
        browser.find_element(By.ID, "sign-out").click()
        wait_for(lambda: browser.current_url.endswith("/login"), 30, "the login form after signing out")
        assert browser.get_cookie("xal_annotate_session") is None
        browser.get(served.url)
        wait_for(lambda: browser.current_url.endswith("/login"), 30, "the page asking to sign in again")
    finally:
        served.close()


# ------------------------------------------------------------------ 3: a held key acts once; revising
def _hold_key(browser, key: str, code: str, keycode: int, seconds: float) -> None:
    """Hold ``key`` as a keyboard does: one keydown, then auto-repeated ones every 50 ms, then keyup."""
    event = {"key": key, "code": code, "text": key, "unmodifiedText": key, "windowsVirtualKeyCode": keycode,
             "nativeVirtualKeyCode": keycode}
    browser.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyDown", **event})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        browser.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyDown", "autoRepeat": True, **event})
    browser.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyUp", **{k: v for k, v in event.items()
                                                                             if "text" not in k.lower()}})


def test_holding_a_number_key_answers_one_item_and_an_answer_is_revised(page, browser):
    from selenium.webdriver.common.by import By

    browser.get(page.url)
    first = _shown(browser)
    _hold_key(browser, "1", "Digit1", 49, seconds=2.5)
    wait_for(lambda: _text(browser, "progress") == "1 of 6 done", 30, "the one answer")
    time.sleep(1)
    assert list(page.answered()) == [first] and page.answered()[first].label == 0
    # back to it, revise: the expert draws a box and presses the other class
    browser.find_element(By.CSS_SELECTOR, f"#item-list li[data-item='{first}']").click()
    _shown(browser, first)
    assert "answered: class_0" in _text(browser, "answer-state") and browser.find_element(By.ID, "revise").is_displayed()
    press(browser, "e")
    wait_for(lambda: "revising" in _text(browser, "answer-state"), 10, "the revising state")
    drag_through(browser, [(4.5, 4.5), (10.5, 9.5)])
    press(browser, "2")
    wait_for(lambda: page.ledger.annotation(first).label == 1, 30, "the revision in the ledger")
    assert page.ledger.annotation(first).roi == BoxRoi(((4.0, 4.0, 11.0, 10.0),))
    (old,) = page.ledger.superseded(first)
    assert old.label == 0 and old.roi is None
    wait_for(lambda: "(revised)" in browser.find_element(By.CSS_SELECTOR, f"#item-list li[data-item='{first}']").text,
             10, "the list marking the revision")


# ------------------------------------------------------------------ 5: a dead server is said
def test_when_the_server_dies_the_page_says_so_and_nothing_looks_recorded(runs, tmp_path, browser):
    from selenium.webdriver.common.by import By

    served = Page(fresh_copy(runs[1], tmp_path / "run"))
    try:
        browser.get(served.url)
        item = _shown(browser)
        served.server.stop()
        drag_through(browser, [(4.5, 4.5), (9.5, 9.5)])
        press(browser, "1")
        message = browser.find_element(By.ID, "message")
        wait_for(lambda: message.is_displayed() and "NOT recorded" in message.text, 30, "the failed answer's message")
        assert _current(browser) == item and _text(browser, "progress") == "0 of 6 done"
        assert "pending" in _text(browser, "answer-state")
        assert browser.execute_script("return state.drawing.boxes.length") == 1  # the drawing is kept
        assert browser.find_elements(By.CSS_SELECTOR, "#item-list li.done") == []
        connection = browser.find_element(By.ID, "connection")
        wait_for(lambda: connection.is_displayed() and "unreachable" in connection.text, 15, "the lost connection")
        assert served.answered() == {}
    finally:
        served.ledger.close()


# ------------------------------------------------------------------ 10: zoom, pan, source pixels, preloading, compression
def test_zoom_pan_source_pixel_boxes_preloading_and_compressed_pixels(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    served = Page(build_dicom_run(tmp_path))
    try:
        browser.get(served.url)
        wait_for(lambda: _text(browser, "shown") == "original 80×96", 30, "the DICOM at its own resolution")
        first = _current(browser)
        view = browser.find_element(By.ID, "view")
        zoom = lambda: browser.execute_script("return state.zoom")  # noqa: E731
        fitted = zoom()
        # the wheel zooms about the pointer: the image point under it stays under it
        browser.execute_script("document.getElementById('view').addEventListener('wheel', (e) => {"
                               "const r = e.target.getBoundingClientRect(); window.wheelAt = [e.clientX - r.left,"
                               "e.clientY - r.top]; }, {capture: true});")
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(view, *image_offset(browser, 30, 40)),
                                                 0, -400).perform()
        wait_for(lambda: zoom()["scale"] > 1.5 * fitted["scale"], 10, "the zoom")
        x, y = browser.execute_script("return window.wheelAt")
        under = lambda z: ((x - z["x"]) / z["scale"], (y - z["y"]) / z["scale"])  # noqa: E731
        assert under(zoom()) == pytest.approx(under(fitted), abs=0.01)
        assert under(fitted) == pytest.approx((30, 40), abs=1)
        # Space + drag pans
        before = zoom()
        ActionChains(browser, duration=0).key_down(Keys.SPACE).move_to_element_with_offset(view, 0, 0) \
            .click_and_hold().move_by_offset(-60, -40).release().key_up(Keys.SPACE).perform()
        after = zoom()
        assert (after["x"] - before["x"], after["y"] - before["y"]) == pytest.approx((-60, -40), abs=1.5)
        assert browser.execute_script("return state.drawing.boxes.length") == 0  # panning draws nothing
        browser.find_element(By.ID, "one-to-one").click()
        assert zoom()["scale"] == pytest.approx(1 / browser.execute_script("return window.devicePixelRatio"))
        press(browser, "f")
        assert zoom()["scale"] == pytest.approx(fitted["scale"]) and zoom()["fitted"]
        # a box over source pixels 11..50 × 13..60, recorded in the 32×32 frame without snapping to it
        drag_through(browser, [(11.5, 13.5), (50.5, 60.5)])
        press(browser, "1")
        wait_for(lambda: first in served.answered(), 30, "the boxed answer")
        (box,) = served.ledger.annotation(first).roi.boxes
        assert box == pytest.approx((11 * 32 / 80, 13 * 32 / 96, 51 * 32 / 80, 61 * 32 / 96))
        assert any(v != round(v) for v in box)
        # the next item was fetched while the first was read: moving on fetches nothing again
        second = wait_for(lambda: _current(browser) if _current(browser) != first else None, 10, "the next item")
        entries = lambda path: browser.execute_script(  # noqa: E731
            "return performance.getEntriesByType('resource').filter(e => e.name.endsWith(arguments[0]))"
            ".map(e => [e.encodedBodySize, e.decodedBodySize])", path)
        _shown(browser, second)
        assert len(entries(f"/api/items/{second}/pixels")) == 1
        assert len(entries(f"/api/items/{second}/source")) == 1
        # pixels travel as 16 bits, gzipped: not 4 bytes of float32 a pixel
        ((encoded, size),) = entries(f"/api/items/{second}/source")
        assert size == 80 * 96 * 2 and encoded < size
    finally:
        served.close()


# ------------------------------------------------------------------ 11: window/level as radiologists use it
def _right_drag(browser, start: tuple[int, int], by: tuple[int, int]) -> None:
    """Right button held while moving (CDP: Selenium's actions have no right-button drag)."""
    x0, y0 = browser.execute_script(
        "const r = document.getElementById('view').getBoundingClientRect();"
        "return [r.left + r.width / 2 + arguments[0], r.top + r.height / 2 + arguments[1]];", *start)
    mouse = lambda kind, x, y, **more: browser.execute_cdp_cmd(  # noqa: E731
        "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **more})
    mouse("mouseMoved", x0, y0)
    mouse("mousePressed", x0, y0, button="right", buttons=2, clickCount=1)
    for step in range(1, 6):
        mouse("mouseMoved", x0 + by[0] * step / 5, y0 + by[1] * step / 5, button="right", buttons=2)
    mouse("mouseReleased", x0 + by[0], y0 + by[1], button="right", buttons=0, clickCount=1)


def test_window_level_by_drag_numbers_and_presets_and_arrows_stay_in_their_control(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    served = Page(build_dicom_run(tmp_path, ct=True))
    try:
        browser.get(served.url)
        wait_for(lambda: _text(browser, "shown") == "original 80×96", 30, "the CT at its own resolution")
        wl = lambda: browser.execute_script("return [state.wl.width, state.wl.level]")  # noqa: E731
        assert wl() == [400, 40]  # the file's own VOI window first
        assert "HU" in _text(browser, "units")
        presets = Select(browser.find_element(By.ID, "preset"))
        labels = [option.text for option in presets.options]
        assert "DICOM: SOFT TISSUE (W 400 L 40)" in labels
        assert all(any(label.startswith(name) for label in labels) for name in ("lung", "mediastinum", "bone"))
        image = "return Array.from(document.getElementById('image').getContext('2d').getImageData(0, 0, 80, 96).data)"
        soft = browser.execute_script(image)
        presets.select_by_visible_text("lung (W 1500 L -600)")
        assert wl() == [1500, -600]
        wait_for(lambda: browser.execute_script(image) != soft, 10, "the lung window on the image")
        # right-drag: to the right widens the window, down raises the level
        _right_drag(browser, (0, 0), (120, 90))
        width, level = wl()
        assert width > 1500 * 1.5 and level > -600
        # Ctrl + drag does the same with the left button
        ActionChains(browser, duration=0).key_down(Keys.CONTROL).move_to_element_with_offset(
            browser.find_element(By.ID, "view"), 0, 0).click_and_hold().move_by_offset(-100, 0).release() \
            .key_up(Keys.CONTROL).perform()
        assert wl()[0] < width and browser.execute_script("return state.drawing.boxes.length") == 0
        # typed numbers (digits typed into a field never answer)
        field = browser.find_element(By.ID, "window-width")
        field.clear()
        field.send_keys("800", Keys.TAB)
        level_field = browser.find_element(By.ID, "window-level")
        level_field.clear()
        level_field.send_keys("-100", Keys.TAB)
        assert wl() == [800, -100] and served.answered() == {}
        # arrows adjust a focused slider, never the item
        item = _current(browser)
        slider = browser.find_element(By.ID, "cam-opacity")
        slider.click()
        value = slider.get_attribute("value")
        slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        assert _current(browser) == item and slider.get_attribute("value") != value
        field.send_keys(Keys.ARROW_LEFT)
        assert _current(browser) == item
    finally:
        served.close()


# ------------------------------------------------------------------ 12: Grad-CAM on request; why, in words
def test_gradcam_is_off_until_asked_and_why_it_was_picked_reads_in_words(page, browser):
    from selenium.webdriver.common.by import By

    browser.get(page.url)
    item = _shown(browser)
    time.sleep(1)
    cam_requests = "return performance.getEntriesByType('resource').filter(e => e.name.includes('cam.png')).length"
    assert browser.execute_script(cam_requests) == 0 and not browser.find_element(By.ID, "cam-legend").is_displayed()
    plain = _canvas_pixel(browser, 16, 16)
    press(browser, "c")
    legend = browser.find_element(By.ID, "cam-legend")
    wait_for(lambda: legend.is_displayed() and
             browser.execute_script("return document.getElementById('cam').naturalWidth") == 32, 30, "the CAM and its legend")
    assert "where the round-0 model looked for class_" in legend.text and "low" in legend.text and "high" in legend.text
    wait_for(lambda: _canvas_pixel(browser, 16, 16) != plain, 10, "the overlay on the image")
    summary = _text(browser, "reason-summary")
    assert summary.startswith("Picked 1st of the 6 images the entropy strategy chose in round 1")
    assert "The model was" in _text(browser, "reason-details")
    raw = browser.find_element(By.ID, "reason")
    assert not raw.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#raw-scores summary").click()
    assert raw.is_displayed() and "uncertainty" in raw.text
    assert _current(browser) == item


# ------------------------------------------------------------------ 13: strokes, masks revisited, done
def test_brush_strokes_are_strokes_masks_are_shown_again_and_a_done_batch_says_so(runs, tmp_path, browser):
    from selenium.webdriver.common.by import By

    served = Page(fresh_copy(runs[1], tmp_path / "run"), run_waits=True)
    try:
        browser.get(served.url)
        item = _shown(browser)
        press(browser, "b")
        browser.execute_script("document.getElementById('brush-size').value = '6'")  # thin: 6 screen pixels
        drag_through(browser, [(2.5, 16.5), (29.5, 16.5)])  # one fast move across the image
        press(browser, "1")
        wait_for(lambda: item in served.answered(), 30, "the brushed answer")
        mask = served.ledger.annotation(item).roi
        assert isinstance(mask, MaskRoi)
        painted = mask.to_mask().numpy()
        assert painted[16, 2:30].all() and painted.sum() == 28  # a line, not two dots
        # back to it: the recorded mask is drawn again
        browser.find_element(By.CSS_SELECTOR, f"#item-list li[data-item='{item}']").click()
        _shown(browser, item)
        wait_for(lambda: browser.execute_script("return state.recorded && state.recorded.item") == item, 10,
                 "the recorded mask")
        on, off = _canvas_pixel(browser, 16.5, 16.5), _canvas_pixel(browser, 16.5, 6.5)
        assert on[1] > on[0] + 20 and not (off[1] > off[0] + 20)  # green where painted
        # the rest answered (another tab): the page says the batch is done and what the run does now
        for other in [i.item_id for i in served.desk.batch() if i.answer is None]:
            served.desk.answer(other, 0, None, "dr-other-tab")
        done = browser.find_element(By.ID, "done")
        wait_for(lambda: done.is_displayed(), 15, "the done state")
        title = _text(browser, "done-title")
        assert title.startswith("Batch done — training round 1") and ("minute" in title)
        assert "as the previous round took" in _text(browser, "done-message")
        assert not browser.find_element(By.ID, "view").is_displayed() and _text(browser, "current-title") == title
        assert browser.title.endswith(title)
    finally:
        served.close()


def test_the_pixel_centre_rule_of_a_stroke_matches_numpy(page, browser):
    """The page's stroke → frame mask (what is recorded) against an independent NumPy rendering."""
    browser.get(page.url)
    _shown(browser)
    bits = browser.execute_script(
        "state.drawing = freshDrawing();"
        "state.drawing.strokes.push({points: [[3.2, 4.7], [20.9, 11.3], [25.0, 28.4]], rx: 1.7, ry: 1.7});"
        "return Array.from(frameMask());")
    got = np.array(bits, dtype=bool).reshape(32, 32)
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    want = np.zeros((32, 32), dtype=bool)
    points = [(3.2, 4.7), (20.9, 11.3), (25.0, 28.4)]
    for (ax, ay), (bx, by) in zip(points, points[1:], strict=False):
        dx, dy = bx - ax, by - ay
        t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy), 0, 1)
        want |= (xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2 <= 1.7 ** 2
    np.testing.assert_array_equal(got, want)
