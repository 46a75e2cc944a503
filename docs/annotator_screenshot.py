"""Make ``docs/annotator.png``: the annotator's viewer with the Grad-CAM (asked for) and a drawn box.

    python docs/annotator_screenshot.py [--out docs/annotator.png]

Builds a small synthetic run whose round-0 model is trained enough for its Grad-CAM to mean
something (64×64, 60 labels, 8 epochs; about a minute on 2 cores), answers round 0 truthfully,
lets the run acquire round 1, serves the page for it and photographs it in headless Chromium
(Debian's chromium + chromium-driver): the first item answered, the second with its Grad-CAM
shown (on request) with the legend, a box drawn around its brightest spot (the lesion), and the
raw scores opened under "why it was picked".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "annotator.png")
    args = parser.parse_args()

    import time

    import numpy as np
    from scipy.ndimage import uniform_filter
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from tests.web.browser import CHROMEDRIVER, CHROMIUM, MISSING, drag_through, start_chromium
    from tests.web.runs import answer_all_truthfully
    from xal_cli.session import RunSession
    from xal_core.data import PoolStore
    from xal_core.loop.data_spec import DataSpec
    from xal_core.loop.ledger import Ledger
    from xal_core.loop.oracle import AnnotationDesk
    from xal_core.loop.protocol import Protocol, TrainRecipe
    from xal_web import AnnotationServer, build_app

    if not (CHROMIUM and CHROMEDRIVER):
        print(MISSING, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        protocol = Protocol(strategies=("dual",), seeds=(0,), initial=60, rounds=1, per_round=12,
                            train=TrainRecipe(architecture="resnet10", epochs=8, batch_size=16, output_stride=16))
        session = RunSession(run_dir, protocol, data=DataSpec(size=(64, 64), pool_size=600, val_size=40, test_size=40),
                             scorer="inprocess", oracle="file", overlay_images=0, progress=False)
        session.run()
        answer_all_truthfully(run_dir)
        session.run()
        with Ledger.open(run_dir / "ledger.sqlite") as ledger:
            desk = AnnotationDesk(ledger, PoolStore.open(run_dir / "data" / "pool"))
            app = build_app(desk, run_dir, annotator="dr-example")
            with AnnotationServer(app, "127.0.0.1:0") as server:
                browser = start_chromium(Path(scratch) / "chromium", 1400, 960)
                try:
                    browser.get(server.url)
                    time.sleep(3)
                    ActionChains(browser).send_keys("2").perform()  # the first item answered: 1 of 12 done
                    time.sleep(2)
                    item = browser.execute_script("return state.loadedItem")
                    image = desk.pool.images([item])[0].mean(dim=0).numpy()
                    smooth = uniform_filter(image, 5)
                    y, x = (int(v) for v in np.unravel_index(np.argmax(smooth), smooth.shape))
                    ActionChains(browser).send_keys("c").perform()  # the Grad-CAM, on request
                    left, top, right, bottom = browser.execute_script(  # the image part on screen
                        "const c = document.getElementById('view');"
                        "return [...screenToImage(4, 4), ...screenToImage(c.clientWidth - 4, c.clientHeight - 4)];")
                    drag_through(browser, [(max(left, 0, x - 6.5), max(top, 0, y - 6.5)),
                                           (min(right, 63.5, x + 6.5), min(bottom, 63.5, y + 6.5))])
                    browser.find_element(By.CSS_SELECTOR, "#raw-scores summary").click()
                    time.sleep(1)
                    browser.save_screenshot(str(args.out))
                finally:
                    browser.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
