"""The annotator's HTTP API over a real socket: uvicorn serving the app on a real run's ledger.

What the page shows (batch, pixels, Grad-CAM tile, all checked against independent computations),
what an answer records (boxes, "no finding", brush masks), and every bad input the issue names:
each gets a clear 4xx with the reason, nothing is written, and the server keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut

from tests.web.runs import build_dicom_run, build_runs, fresh_copy
from xal_core.data import PoolStore
from xal_core.loop.annotations import BoxRoi, MaskRoi
from xal_core.loop.learner import checkpoint_path
from xal_core.loop.ledger import Arm, Ledger
from xal_core.loop.oracle import AnnotationDesk
from xal_core.loop.report.overlays import cam_maps, cam_rgba
from xal_core.models import ExplainableModel, load_checkpoint
from xal_web import AnnotationServer, build_app
from xal_web.app import STATIC, body_cap

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "Xq3-vN8_pL2rT7kW0zYb5mC9dH4sJ6fG1aQeR"  # 37 characters, 35 different


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    return build_runs(tmp_path_factory.mktemp("runs"))


class Served:
    """The app on a real socket for one run folder, and a client for it."""

    def __init__(self, run_dir: Path, token: str | None = None) -> None:
        self.run_dir = run_dir
        self.ledger = Ledger.open(run_dir / "ledger.sqlite")
        self.pool = PoolStore.open(run_dir / "data" / "pool")
        self.desk = AnnotationDesk(self.ledger, self.pool)
        self.server = AnnotationServer(build_app(self.desk, run_dir, token=token, annotator="dr-web"),
                                       "127.0.0.1:0", has_token=token is not None).start()
        self.client = httpx.Client(base_url=self.server.url.rstrip("/"), timeout=60)

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.ledger.close()

    def annotations(self) -> dict[int, object]:
        return {item: self.ledger.annotation(item) for item in range(len(self.pool))
                if self.ledger.annotation(item) is not None}

    def pending_ids(self) -> list[int]:
        return [item.item_id for item in self.desk.batch() if item.answer is None]


@pytest.fixture
def served(runs, tmp_path):
    """A fresh copy of the run waiting on round 1 (CAM tiles exist), served without a token."""
    served = Served(fresh_copy(runs[1], tmp_path / "run"))
    yield served
    served.close()


# ------------------------------------------------------------------ what the page reads
def test_the_batch_lists_the_open_round_in_acquisition_order_with_why_each_was_picked(served):
    batch = served.client.get("/api/batch").json()
    records = served.ledger.acquisitions(Arm("entropy", 0), round=1)
    assert [item["item_id"] for item in batch["items"]] == [r.row.item_id for r in records]
    assert (batch["done"], batch["total"], batch["classes"], batch["frame"]) == (0, 6, ["class_0", "class_1"], [32, 32])
    assert batch["roi_format"] == "mask" and batch["annotator"] == "dr-web"
    for item, record in zip(batch["items"], records, strict=True):
        assert item["rank"] == record.row.rank and item["round"] == 1 and not item["initial"]
        assert item["predicted_class"] == record.row.predicted_class
        assert item["probabilities"] == pytest.approx(list(record.row.probabilities))
        assert item["uncertainty"] == pytest.approx(record.row.uncertainty)
        assert item["source_id"] == served.pool.source_ids([record.row.item_id])[0]


def decoded(response: httpx.Response) -> np.ndarray:
    """The page's decoding of a pixels response: ``X-Offset + X-Scale × uint16``."""
    height, width = int(response.headers["x-height"]), int(response.headers["x-width"])
    codes = np.frombuffer(response.content, dtype="<u2").reshape(height, width)
    return float(response.headers["x-offset"]) + float(response.headers["x-scale"]) * codes.astype(np.float64)


def test_pixels_are_the_pool_image_in_16_bits_within_half_a_step(served):
    item = served.pending_ids()[2]
    response = served.client.get(f"/api/items/{item}/pixels")
    assert response.status_code == 200 and response.headers["x-height"] == "32" and response.headers["x-width"] == "32"
    want = served.pool.images([item])[0].double().mean(dim=0).numpy()
    step = float(response.headers["x-scale"])
    assert step == pytest.approx((want.max() - want.min()) / 65535, rel=1e-5)
    np.testing.assert_allclose(decoded(response), want, rtol=0, atol=step / 2 + 1e-6)


def test_the_cam_tile_is_the_acquiring_models_gradcam(served):
    item = served.pending_ids()[0]
    response = served.client.get(f"/api/items/{item}/cam.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    tile = np.asarray(Image.open(io.BytesIO(response.content)))
    saved = load_checkpoint(checkpoint_path(served.run_dir, Arm("entropy", 0), 0))
    cams, _ = cam_maps(ExplainableModel(saved.build()).eval(), served.pool.images([item]),
                       normalise=saved.preprocessing)
    assert tile.shape == (32, 32, 4)
    np.testing.assert_array_equal(tile, cam_rgba(cams[0]))


def test_items_outside_the_open_batch_are_not_shown(served, runs):
    outside = next(i for i in range(len(served.pool)) if i not in served.pending_ids())
    for path in (f"/api/items/{outside}/pixels", f"/api/items/{outside}/cam.png"):
        response = served.client.get(path)
        assert response.status_code == 404 and "not in the open batch" in response.json()["error"]
    assert served.client.get("/api/items/..%2F..%2Fledger.sqlite/pixels").status_code == 404
    assert served.client.get("/static/../app.py").status_code == 404


def test_the_original_resolution_is_read_from_the_source_dicom(tmp_path):
    """A DICOM is served as its modality values with its own VOI windows (a VOI LUT, not being a
    window, is applied as the file says); the pool image stays available at the model's frame."""
    from xal_core.data.dicom import read_dicom

    served = Served(build_dicom_run(tmp_path))
    try:
        kinds = set()
        for item in served.pending_ids():
            source_id = served.pool.source_ids([item])[0]
            response = served.client.get(f"/api/items/{item}/source")
            assert response.status_code == 200 and (response.headers["x-height"], response.headers["x-width"]) == ("96", "80")
            path = tmp_path / "vindr" / "train" / f"{source_id}.dicom"
            assert read_dicom(path).bits_stored > 8  # a 16-bit image: the page windows the values itself
            dataset = pydicom.dcmread(path)
            info = json.loads(response.headers["x-image-info"])
            if "VOILUTSequence" in dataset and "WindowCenter" not in dataset:
                kinds.add("lut")
                np.testing.assert_allclose(decoded(response), read_dicom(path).pixels, atol=float(response.headers["x-scale"]))
                continue
            kinds.add("window" if "WindowCenter" in dataset else "none")
            assert float(response.headers["x-scale"]) == 1.0  # integers of a 16-bit range travel exactly
            np.testing.assert_array_equal(decoded(response), apply_modality_lut(dataset.pixel_array, dataset))
            windows = [{"center": float(dataset.WindowCenter), "width": float(dataset.WindowWidth),
                        "name": "file window 1"}] if "WindowCenter" in dataset else []
            assert info["windows"] == windows and info["modality"] == "DX"
            assert info["invert"] == (dataset.PhotometricInterpretation == "MONOCHROME1")
            pool = served.client.get(f"/api/items/{item}/pixels")
            assert decoded(pool).shape == (32, 32)  # the pool image stays available at the model's frame
        assert kinds <= {"window", "lut", "none"} and kinds, kinds
    finally:
        served.close()


def test_generated_data_has_no_original_and_the_page_is_told_why(served):
    response = served.client.get(f"/api/items/{served.pending_ids()[0]}/source")
    assert response.status_code == 404 and "no source file" in response.json()["error"]


def test_round_zero_items_have_no_cam_and_say_why(runs, tmp_path):
    served = Served(fresh_copy(runs[0], tmp_path / "run"))
    try:
        item = served.pending_ids()[0]
        response = served.client.get(f"/api/items/{item}/cam.png")
        assert response.status_code == 404 and "picked at random" in response.json()["error"]
        assert served.client.get("/api/batch").json()["items"][0]["initial"] is True
    finally:
        served.close()


# ------------------------------------------------------------------ answers
def test_answers_are_recorded_at_once_with_their_roi(served):
    boxes_item, empty_item, brush_item, both_item, plain_item = served.pending_ids()[:5]
    post = served.client.post
    assert post(f"/api/items/{boxes_item}/answer", json={"label_index": 1, "boxes": [[2, 3, 10, 12], [0, 0, 4, 4]]}).status_code == 200
    assert post(f"/api/items/{empty_item}/answer", json={"label_name": "class_0", "no_finding": True}).status_code == 200
    mask = np.zeros((32, 32), dtype=bool)
    mask[5:9, 20:27] = True
    packed = base64.b64encode(np.packbits(mask, axis=-1).tobytes()).decode()
    assert post(f"/api/items/{brush_item}/answer", json={"label_index": 0, "mask": packed, "annotator": "dr-b"}).status_code == 200
    assert post(f"/api/items/{both_item}/answer", json={"label_index": 1, "mask": packed, "boxes": [[0, 0, 2, 2]]}).status_code == 200
    assert post(f"/api/items/{plain_item}/answer", json={"label_name": "CLASS_1"}).status_code == 200

    answers = served.annotations()
    assert answers[boxes_item].roi == BoxRoi(((2, 3, 10, 12), (0, 0, 4, 4))) and answers[boxes_item].label == 1
    assert answers[boxes_item].annotator == "dr-web"
    assert answers[empty_item].roi == BoxRoi(()) and answers[empty_item].label_name == "class_0"
    assert answers[brush_item].roi == MaskRoi.from_mask(mask) and answers[brush_item].annotator == "dr-b"
    union = mask.copy()
    union[0:2, 0:2] = True
    assert answers[both_item].roi == MaskRoi.from_mask(union)
    assert answers[plain_item].roi is None and answers[plain_item].label == 1
    batch = served.client.get("/api/batch").json()
    assert (batch["done"], batch["total"]) == (5, 6)
    shown = {item["item_id"]: item["answer"] for item in batch["items"]}
    assert shown[empty_item]["roi"] == {"kind": "no finding"}
    assert shown[boxes_item]["roi"] == {"kind": "boxes", "boxes": [[2, 3, 10, 12], [0, 0, 4, 4]]}


BAD_ANSWERS = [
    ({"label_index": 2}, 400, "label_index: 2 is not a class index"),
    ({"label_name": "tumour"}, 400, "unknown label 'tumour'"),
    ({"label_index": True}, 400, "label_index: expected an integer"),
    ({"label_index": "1"}, 400, "label_index: expected an integer"),
    ({"label_name": 1}, 400, "label_name: expected a class name"),
    ({"label_index": 0, "label_name": "class_0"}, 400, "exactly one of label_index"),
    ({"label": 0}, 400, "label: not accepted"),
    ({"label_index": 0, "boxes": [[40, 40, 50, 50]]}, 400, "lies entirely outside"),
    ({"label_index": 0, "boxes": [[10, 10, 2, 2]]}, 400, "expected x_min <= x_max"),
    ({"label_index": 0, "boxes": [[1, 2, 3]]}, 400, "expected 4 numbers"),
    ({"label_index": 0, "boxes": [[1, 2, "x", 4]]}, 400, "expected 4 numbers"),
    ({"label_index": 0, "mask": "not base64!"}, 400, "mask: not base64"),
    ({"label_index": 0, "mask": base64.b64encode(b"\0" * 7).decode()}, 400, "do not hold a 32×32 mask"),
    ({"label_index": 0, "no_finding": True, "boxes": [[1, 1, 3, 3]]}, 400, "'no finding' with a drawn ROI"),
    ({"label_index": 0, "colour": "red"}, 400, "unknown field(s) colour"),
    ({"label_index": 0, "revises": 0}, 409, "no answer to revise"),
    ([0], 400, "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD_ANSWERS, ids=[r for _, _, r in BAD_ANSWERS])
def test_a_bad_answer_is_refused_with_its_reason_and_nothing_is_written(served, body, status, reason):
    item = served.pending_ids()[0]
    response = served.client.post(f"/api/items/{item}/answer", json=body)
    assert response.status_code == status and reason in response.json()["error"], response.text
    assert item in served.pending_ids() and len(served.annotations()) == 10  # only round 0's answers
    assert served.client.get("/api/batch").status_code == 200  # still serving


def test_requests_the_page_never_sends_are_refused(served):
    item = served.pending_ids()[0]
    url = f"/api/items/{item}/answer"
    cases = [
        (served.client.post(url, content=b'{"label_index": 0}'), 415, "application/json"),
        (served.client.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400, "not JSON"),
        (served.client.post(url, json={"label_index": 0}, headers={"origin": "http://evil.example"}), 403, "own page"),
        (served.client.post(url, json={"label_index": 0}, headers={"origin": "null", "sec-fetch-site": "cross-site"}),
         403, "own page"),
        (served.client.post(url, json={"label_index": 0}, headers={"sec-fetch-site": "cross-site"}), 403, "own page"),
        (served.client.post(url, content=b"x" * (body_cap((32, 32)) + 1),
                            headers={"content-type": "application/json"}), 413, "over"),
        (served.client.post("/api/items/999999/answer", json={"label_index": 0}), 409, "did not acquire it"),
        (served.client.post("/api/items/-1/answer", json={"label_index": 0}), 404, None),
    ]
    for response, status, reason in cases:
        assert response.status_code == status, response.text
        if reason:
            assert reason in response.json()["error"]
    assert item in served.pending_ids() and len(served.annotations()) == 10
    assert served.client.get("/api/batch").status_code == 200


def test_an_oversized_body_sent_without_a_length_is_cut_off(served):
    item = served.pending_ids()[0]

    def chunks():
        for _ in range(64):
            yield b" " * 4096

    response = served.client.post(f"/api/items/{item}/answer", content=chunks(),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413 and item in served.pending_ids()


def test_an_answered_item_is_never_answered_again(served):
    item = served.pending_ids()[0]
    assert served.client.post(f"/api/items/{item}/answer", json={"label_index": 0}).status_code == 200
    for body in ({"label_index": 0}, {"label_index": 1}):  # the same answer or another: the item is no longer pending
        again = served.client.post(f"/api/items/{item}/answer", json=body)
        assert again.status_code == 409 and "answered already" in again.json()["error"]
    assert served.annotations()[item].label == 0


def test_two_tabs_racing_on_one_item_record_it_once(served):
    item = served.pending_ids()[0]
    start = threading.Barrier(8)
    results: list[httpx.Response] = []

    def tab(label: int) -> None:
        with httpx.Client(base_url=served.client.base_url, timeout=60) as client:
            start.wait()
            results.append(client.post(f"/api/items/{item}/answer", json={"label_index": label}))

    threads = [threading.Thread(target=tab, args=(n % 2,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if r.status_code == 200]
    assert len(winners) == 1 and sorted(r.status_code for r in results) == [200] + [409] * 7
    assert served.annotations()[item].label == winners[0].json()["label"]


# ------------------------------------------------------------------ the token
def test_with_a_token_everything_but_the_login_form_needs_the_cookie(runs, tmp_path):
    served = Served(fresh_copy(runs[1], tmp_path / "run"), token=TOKEN)
    try:
        client = served.client
        item = served.pending_ids()[0]
        assert client.get("/").status_code == 303 and client.get("/").headers["location"] == "/login"
        for path in ("/api/batch", f"/api/items/{item}/pixels", f"/api/items/{item}/cam.png"):
            assert client.get(path).status_code == 401
        refused = client.post(f"/api/items/{item}/answer", json={"label_index": 0})
        assert refused.status_code == 401 and "sign in" in refused.json()["error"]
        stuffed = client.post("/login", content="&".join(f"f{n}=x" for n in range(10)),
                              headers={"content-type": "application/x-www-form-urlencoded"})
        assert stuffed.status_code == 400 and "one field" in stuffed.json()["error"]
        assert client.post("/login", content=b"t" * 5000).status_code == 413
        wrong = client.post("/login", data={"token": "not-the-token-at-all"})
        assert wrong.status_code == 303 and wrong.headers["location"] == "/login?failed=1" and not client.cookies
        right = client.post("/login", data={"token": TOKEN})
        cookie = right.headers["set-cookie"]
        assert right.status_code == 303 and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert TOKEN not in cookie and TOKEN not in right.headers["location"]
        assert client.get("/api/batch").status_code == 200
        assert client.post(f"/api/items/{item}/answer", json={"label_index": 0}).status_code == 200
        assert len(served.annotations()) == 11
        forged = httpx.get(f"{served.server.url}api/batch", cookies={"xal_annotate_session": "0" * 64})
        assert forged.status_code == 401
    finally:
        served.close()


def test_without_a_token_only_loopback_is_served(served):
    app = build_app(served.desk, served.run_dir)
    with pytest.raises(ValueError, match="non-loopback address only with a --token-file"):
        AnnotationServer(app, "0.0.0.0:0")
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        AnnotationServer(app, "localhost")


def test_the_page_runs_no_script_from_data(served):
    response = served.client.get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    for page in ("index.html", "login.html"):
        html = (STATIC / page).read_text()
        assert not re.search(r"<script(?![^>]*\ssrc=)", html), page  # every script is a file
        assert not re.search(r"\son[a-z]+\s*=", html), page  # no inline event handlers
    script = (STATIC / "app.js").read_text()
    for sink in (r"\.(inner|outer)HTML\s*=", r"insertAdjacentHTML\(", r"document\.write\(", r"\beval\(",
                 r"new Function\("):
        assert not re.search(sink, script), sink


# ------------------------------------------------------------------ the command
def _annotate(run_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "xal_cli.main", "annotate", str(run_dir), "--listen",
                                "127.0.0.1:0", *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    for line in process.stdout:
        if line.startswith("open http://"):
            return process, line.split()[1]
    raise AssertionError(f"xal annotate did not start: {process.wait()}")


def test_xal_annotate_survives_kill_9_without_losing_or_reasking(runs, tmp_path):
    run_dir = fresh_copy(runs[1], tmp_path / "run")
    process, url = _annotate(run_dir)
    try:
        first = httpx.get(url + "api/batch").json()["items"]
        for item in first[:2]:
            assert httpx.post(f"{url}api/items/{item['item_id']}/answer", json={"label_index": 1}).status_code == 200
    finally:
        process.kill()
        process.wait()
    process, url = _annotate(run_dir)
    try:
        batch = httpx.get(url + "api/batch").json()
        assert batch["done"] == 2 and [i["answer"] is not None for i in batch["items"]] == [True, True] + [False] * 4
        again = httpx.post(f"{url}api/items/{first[0]['item_id']}/answer", json={"label_index": 0})
        assert again.status_code == 409
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
        assert [ledger.annotation(i["item_id"]).label for i in first[:2]] == [1, 1]


def test_xal_annotate_explains_what_it_cannot_serve(runs, tmp_path):
    def xal(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xal_cli.main", "annotate", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    result = xal(str(tmp_path))
    assert result.returncode == 2 and "not a run folder" in result.stderr
    run_dir = fresh_copy(runs[1], tmp_path / "run")
    with Ledger.open(run_dir / "ledger.sqlite"):  # a running `xal run` holds the ledger
        result = xal(str(run_dir), "--listen", "127.0.0.1:0")
    assert result.returncode == 2 and "xal run --oracle web" in result.stderr
    result = xal(str(run_dir), "--listen", "0.0.0.0:0")
    assert result.returncode == 2 and "only with a --token-file" in result.stderr
    short = tmp_path / "short.txt"
    short.write_text("short")
    result = xal(str(run_dir), "--token-file", str(short))
    assert result.returncode == 2 and "at least 16 characters" in result.stderr
    weak = tmp_path / "weak.txt"
    weak.write_text("a" * 16)  # long enough for xal serve, not to guard expert labels
    result = xal(str(run_dir), "--token-file", str(weak))
    assert result.returncode == 2 and "at least 32 characters" in result.stderr, result.stderr
    done = fresh_copy(runs[0], tmp_path / "done")
    from tests.web.runs import answer_all_truthfully

    answer_all_truthfully(done)
    result = xal(str(done))
    assert result.returncode == 0 and "nothing to label" in result.stdout
