"""Issue 27's probes against the annotator's HTTP API, over a real socket (uvicorn + httpx).

Wrong answers recorded (digit class names, answers that can never be corrected), images cached
across runs, DNS rebinding, idle sockets, token guessing and weak tokens, cookies that never expire,
and requests that made the server fail with a 500 or store what cannot be meant. Each test failed
on the code before the issue was fixed.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.web.runs import build_dicom_run, build_runs, fresh_copy
from tests.web.test_api import TOKEN, Served, decoded
from xal_core.loop.annotations import Annotation, BoxRoi
from xal_core.loop.ledger import Arm, Ledger, LedgerConflict
from xal_core.loop.oracle import NotPending
from xal_core.loop.training import round_training_set
from xal_web import AnnotationServer, build_app
from xal_web.auth import SESSION_SECONDS, Gate, token_problem
from xal_web.guard import SECURITY_HEADERS

FIXTURES = Path(__file__).resolve().parents[1] / "loop" / "fixtures"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    return build_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def served(runs, tmp_path):
    served = Served(fresh_copy(runs[1], tmp_path / "run"))
    yield served
    served.close()


def _digit_classes(run_dir: Path, names: list[str]) -> None:
    """Rename the pool's classes (the images and labels stay): what a dataset with digit names gives."""
    manifest_path = run_dir / "data" / "pool" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["classes"] = names
    manifest_path.write_text(json.dumps(manifest))


# ------------------------------------------------------------------ 2: the class pressed is the class recorded
def test_with_digit_class_names_the_class_pressed_is_the_class_recorded(runs, tmp_path):
    run_dir = fresh_copy(runs[1], tmp_path / "run")
    _digit_classes(run_dir, ["1", "2"])
    served = Served(run_dir)
    try:
        first, second, third = served.pending_ids()[:3]
        post = served.client.post
        # the page's key 2 is index 1, which is class "2"; the old wire read the 1 as the name "1"
        ambiguous = post(f"/api/items/{first}/answer", json={"label": 1})
        assert ambiguous.status_code == 400 and "label_index" in ambiguous.json()["error"]
        assert first in served.pending_ids()
        assert post(f"/api/items/{first}/answer", json={"label_index": 1}).json()["label_name"] == "2"
        assert post(f"/api/items/{second}/answer", json={"label_name": "1"}).json()["label_name"] == "1"
        assert served.annotations()[first].label_name == "2" and served.annotations()[second].label == 0
        # the desk itself: an int is an index, a str a name, never the other way round
        assert served.desk.answer(third, 1, None, "dr-x").label_name == "2"
    finally:
        served.close()


# ------------------------------------------------------------------ 3: an answer can be corrected before training
def test_an_answer_of_the_open_batch_is_revised_and_the_old_one_kept(served):
    item, other = served.pending_ids()[:2]
    post = served.client.post
    assert post(f"/api/items/{item}/answer", json={"label_index": 0, "boxes": [[1, 1, 5, 5]]}).status_code == 200
    shown = {i["item_id"]: i for i in served.client.get("/api/batch").json()["items"]}[item]["answer"]
    assert (shown["revision"], shown["revisable"]) == (0, True)
    stale = post(f"/api/items/{item}/answer", json={"label_index": 1, "revises": 1})
    assert stale.status_code == 409 and "revised meanwhile" in stale.json()["error"]
    fixed = post(f"/api/items/{item}/answer", json={"label_index": 1, "no_finding": True, "revises": 0})
    assert fixed.status_code == 200 and fixed.json()["revision"] == 1
    again = post(f"/api/items/{item}/answer", json={"label_index": 0, "revises": 0})  # another tab, too late
    assert again.status_code == 409 and "revised meanwhile" in again.json()["error"]
    assert served.ledger.annotation(item).label == 1 and served.ledger.annotation(item).roi == BoxRoi(())
    (old,) = served.ledger.superseded(item)
    assert old.label == 0 and old.roi == BoxRoi(((1, 1, 5, 5),))
    recorded = served.client.get(f"/api/items/{item}/answer").json()
    assert recorded["revision"] == 1 and recorded["label_name"] == "class_1"
    # the loop trains on the latest answer: the labeled set and the ROIs read back from the ledger
    arm = Arm("entropy", 0)
    assert served.ledger.labeled(arm)[item] == 1
    training = round_training_set(served.ledger, arm, 1, (32, 32), with_rois=True)
    row = list(training.ids).index(item)
    assert int(training.labels[row]) == 1 and not training.rois[row].any()
    # once the batch is complete the run takes it: no more revisions
    for pending in served.pending_ids():
        assert post(f"/api/items/{pending}/answer", json={"label_index": 0}).status_code == 200
    closed = post(f"/api/items/{other}/answer", json={"label_index": 1, "revises": 0})
    assert closed.status_code in (404, 409)
    with pytest.raises(NotPending, match="batch is complete"):
        served.desk.answer(item, 0, None, "dr-late", revises=1)


def test_wait_for_returns_the_latest_revision_once_the_batch_is_complete(served):
    ids = served.pending_ids()
    for item in ids[:-1]:
        served.desk.answer(item, 0, None, "dr-a")
    served.desk.answer(ids[0], 1, None, "dr-a", revises=0)
    served.desk.answer(ids[-1], 0, None, "dr-a")
    answers = served.desk.wait_for(ids, timeout=5)
    assert answers[0].label == 1 and all(a.label == 0 for a in answers[1:])
    served.ledger.record_annotations(Arm("entropy", 0), answers)  # what the loop does next: no conflict


def test_a_ledger_written_before_revisions_reads_and_takes_them(tmp_path):
    expected = json.loads((FIXTURES / "v1_before_split.json").read_text())
    path = tmp_path / "ledger.sqlite"
    shutil.copyfile(FIXTURES / "v1_before_split.sqlite", path)
    with Ledger.open(path, readonly=True) as ledger:
        item = next(iter(ledger.labeled(Arm("dual", 0))))
        assert ledger.superseded(item) == [] and ledger.revision_counts([item]) == {}
        before = ledger.annotation(item)
    with Ledger.open(path, run_config=expected["run_config"]) as ledger:
        other = 1 - before.label if before.label in (0, 1) else 0
        revised = Annotation(item, other, "revised", None, "dr-r")
        with pytest.raises(LedgerConflict, match="revision 0"):
            ledger.revise_annotation(revised, revises=2)
        assert ledger.revise_annotation(revised, revises=0) == 1
    with Ledger.open(path, readonly=True) as ledger:
        assert ledger.annotation(item).label == other and ledger.superseded(item)[0].same_answer(before)
        assert ledger.export()["schema_version"] == 1  # still a schema-1 file, readable by older xal


# ------------------------------------------------------------------ 4: images are never cached across runs
def test_images_and_answers_are_never_stored_by_the_browser(served):
    item = served.pending_ids()[0]
    for path in (f"/api/items/{item}/pixels", f"/api/items/{item}/cam.png", "/api/batch"):
        response = served.client.get(path)
        assert response.status_code == 200 and response.headers["cache-control"] == "no-store", path
    assert served.client.get(f"/api/items/{item}/source").headers["cache-control"] == "no-store"


def test_pixels_travel_compressed(served):
    item = served.pending_ids()[0]
    response = served.client.get(f"/api/items/{item}/pixels", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    # 16 bits a pixel, gzipped (this pool's images are noise, which compresses little): not float32's 32
    assert int(response.headers["content-length"]) < 0.6 * 32 * 32 * 4
    assert decoded(response).shape == (32, 32)


# ------------------------------------------------------------------ 6: DNS rebinding
def test_a_rebound_host_name_is_refused(served):
    item = served.pending_ids()[0]
    evil = {"host": "evil.example", "origin": "http://evil.example"}
    for response in (served.client.get("/api/batch", headers=evil),
                     served.client.get(f"/api/items/{item}/pixels", headers=evil),
                     served.client.post(f"/api/items/{item}/answer", json={"label_index": 0}, headers=evil)):
        assert response.status_code == 400 and "--allowed-host" in response.json()["error"], response.text
        assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert item in served.pending_ids()
    port = served.server.port
    for host in ("localhost", "127.0.0.1", "LOCALHOST."):
        assert served.client.get("/api/batch", headers={"host": f"{host}:{port}"}).status_code == 200


def test_allowed_hosts_are_served(served):
    app = build_app(served.desk, served.run_dir)
    with AnnotationServer(app, "127.0.0.1:0", allowed_hosts=["annotate.example.org"]) as server:
        url = f"{server.url}api/batch"
        assert httpx.get(url, headers={"host": "annotate.example.org"}).status_code == 200
        assert httpx.get(url, headers={"host": "other.example.org"}).status_code == 400
    with pytest.raises(ValueError, match="--allowed-host"):
        AnnotationServer(app, "127.0.0.1:0", allowed_hosts=["http://x.example/"])
    # on a wildcard listen (a token then) the machine is reached by its addresses: an IP is no rebinding
    with AnnotationServer(build_app(served.desk, served.run_dir, token=TOKEN), "0.0.0.0:0", has_token=True) as server:
        url = f"http://127.0.0.1:{server.port}/api/batch"
        assert httpx.get(url, headers={"host": f"10.1.2.3:{server.port}"}).status_code == 401  # past the host check
        assert httpx.get(url, headers={"host": f"[fd00::5]:{server.port}"}).status_code == 401
        assert httpx.get(url, headers={"host": f"evil.example:{server.port}"}).status_code == 400


def test_xal_annotate_takes_allowed_hosts(runs, tmp_path):
    from tests.web.test_api import _annotate

    process, url = _annotate(fresh_copy(runs[1], tmp_path / "run"), "--allowed-host", "Annotate.Example.org")
    try:
        assert httpx.get(url + "api/batch", headers={"host": "annotate.example.org:443"}).status_code == 200
        assert httpx.get(url + "api/batch", headers={"host": "evil.example"}).status_code == 400
    finally:
        process.kill()
        process.wait()


# ------------------------------------------------------------------ 7: idle and slow sockets
def test_seventy_idle_sockets_do_not_block_a_real_request(served):
    app = build_app(served.desk, served.run_dir)
    with AnnotationServer(app, "127.0.0.1:0", head_timeout=2.0) as server:
        idle, slow = [], []
        try:
            for _ in range(70):
                idle.append(socket.create_connection(("127.0.0.1", server.port)))
            for _ in range(70):  # byte-by-byte clients that never finish their headers
                connection = socket.create_connection(("127.0.0.1", server.port))
                connection.sendall(b"GET /api/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                slow.append(connection)
            for _ in range(10):  # refused at once (413), then the body dribbles: not kept open for it
                connection = socket.create_connection(("127.0.0.1", server.port))
                connection.sendall(b"POST /api/items/1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Content-Type: application/json\r\nContent-Length: 9999999\r\n\r\n{")
                slow.append(connection)
            started = time.monotonic()
            response = httpx.get(f"{server.url}api/batch", timeout=10)
            assert response.status_code == 200 and time.monotonic() - started < 3
            time.sleep(3)  # past the head deadline: the server has dropped them all
            for connection in idle + slow:
                connection.settimeout(5)
                while connection.recv(65536):  # a refusal may come first; then the server closes
                    pass
        finally:
            for connection in idle + slow:
                connection.close()


# ------------------------------------------------------------------ 8: tokens, guessing, sessions
def test_weak_tokens_are_refused_with_the_rule():
    for weak in ("a" * 16, "a" * 40, "ab" * 20, "0123456789abcdef" * 2, "short"):
        problem = token_problem(weak)
        assert problem and "at least 32 characters" in problem
        with pytest.raises(ValueError, match="at least 32 characters"):
            Gate(weak)
    assert token_problem(TOKEN) is None


def test_token_guessing_is_slowed_down_per_address(runs, tmp_path):
    served = Served(fresh_copy(runs[1], tmp_path / "run"), token=TOKEN)
    try:
        statuses = []
        for n in range(40):
            statuses.append(served.client.post("/login", data={"token": f"wrong-{n}"}).status_code)
        assert statuses[:5] == [303] * 5 and statuses.count(429) >= 30
        refused = served.client.post("/login", data={"token": TOKEN})  # even the right one waits its turn
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "wait" in refused.json()["error"] and not served.client.cookies
        page = served.client.post("/login", data={"token": "x"}, headers={"accept": "text/html"})
        assert page.status_code == 429 and "Wait" in page.text
    finally:
        served.close()


def test_the_session_expires_and_signs_out(runs, tmp_path):
    served = Served(fresh_copy(runs[1], tmp_path / "run"), token=TOKEN)
    try:
        client = served.client
        signed = client.post("/login", data={"token": TOKEN})
        cookie = signed.headers["set-cookie"].lower()
        assert f"max-age={SESSION_SECONDS}" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        value = client.cookies["xal_annotate_session"]
        assert client.get("/api/batch").status_code == 200
        second = httpx.post(f"{served.server.url}login", data={"token": TOKEN})
        assert second.cookies["xal_annotate_session"] != value  # each sign-in gets its own session
        gate = Gate(TOKEN)
        old = gate.new_session(now=time.time() - SESSION_SECONDS - 1)
        expired = httpx.get(f"{served.server.url}api/batch", cookies={"xal_annotate_session": old})
        assert expired.status_code == 401
        tampered = value.split(".")
        tampered[0] = str(int(time.time()) + 3600)  # a later issue time under the old signature
        assert httpx.get(f"{served.server.url}api/batch",
                         cookies={"xal_annotate_session": ".".join(tampered)}).status_code == 401
        bye = client.post("/logout")
        assert bye.status_code == 303 and "max-age=0" in bye.headers["set-cookie"].lower()
        replayed = httpx.get(f"{served.server.url}api/batch", cookies={"xal_annotate_session": value})
        assert replayed.status_code == 401  # a copy of the signed-out cookie is refused too
        assert client.post("/logout", headers={"origin": "http://evil.example"}).status_code == 403
    finally:
        served.close()


def test_a_same_origin_form_post_with_origin_null_signs_in(runs, tmp_path):
    """What Chromium sent under the old ``Referrer-Policy: no-referrer``: ``Origin: null`` with
    ``Sec-Fetch-Site: same-origin``. Another site's page gets ``cross-site`` and stays refused."""
    served = Served(fresh_copy(runs[1], tmp_path / "run"), token=TOKEN)
    try:
        own = {"origin": "null", "sec-fetch-site": "same-origin"}
        assert served.client.post("/login", data={"token": TOKEN}, headers=own).status_code == 303
        assert served.client.get("/api/batch").status_code == 200
        assert served.client.get("/").headers["referrer-policy"] == "same-origin"
        foreign = httpx.post(f"{served.server.url}login", data={"token": TOKEN},
                             headers={"origin": "null", "sec-fetch-site": "cross-site"})
        assert foreign.status_code == 403 and not foreign.cookies
    finally:
        served.close()


# ------------------------------------------------------------------ 9: 4xx, never 500, and the same headers
def _nested(depth: int) -> bytes:
    return b'{"label_index": 0, "boxes": ' + b"[" * depth + b"]" * depth + b"}"


PROBES = [
    (_nested(5000), 400, "nests JSON deeper"),
    (b'{"label_index": 0, "boxes": [[1, 1, 1e400, 5]]}', 400, "boxes: box 0 needs 4 finite numbers"),
    (b'{"label_index": 0, "boxes": [[1, 1, NaN, 5]]}', 400, "boxes: box 0 needs 4 finite numbers"),
    (b'{"label_index": ' + b"9" * 5000 + b"}", 400, "label_index: expected an integer"),
    (b'{"label_index": 0, "boxes": [[-1e308, -1e308, 1e308, 1e308]]}', 400, "boxes: box 0"),
    (b'{"label_index": 0, "boxes": [[4, 4, 4, 9]]}', 400, "encloses no area"),
    (b'{"label_index": 0, "revises": 1e3}', 400, "revises"),
]


@pytest.mark.parametrize(("body", "status", "reason"), PROBES, ids=[r for _, _, r in PROBES])
def test_bodies_that_failed_with_a_500_are_refused_by_field(served, body, status, reason):
    item = served.pending_ids()[0]
    response = served.client.post(f"/api/items/{item}/answer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and reason in response.json()["error"], response.text[:300]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert item in served.pending_ids()


def test_a_mask_on_a_box_pool_is_refused(runs, tmp_path):
    run_dir = fresh_copy(runs[1], tmp_path / "run")
    manifest_path = run_dir / "data" / "pool" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["roi_format"] = manifest["oracle_roi_format"] = "boxes"
    manifest_path.write_text(json.dumps(manifest))
    import base64

    mask = np.zeros((32, 32), dtype=bool)
    mask[3:6, 3:6] = True
    packed = base64.b64encode(np.packbits(mask, axis=-1).tobytes()).decode()
    served = Served(run_dir)
    try:
        item = served.pending_ids()[0]
        response = served.client.post(f"/api/items/{item}/answer", json={"label_index": 0, "mask": packed})
        assert response.status_code == 400 and "mask: this pool's expert ROIs are boxes" in response.json()["error"]
        assert served.client.get("/api/batch").json()["roi_format"] == "boxes"
    finally:
        served.close()


def test_paths_that_failed_with_a_500_are_404s_with_the_headers(served):
    for path in ("/api/items/100000000000000000000/pixels", "/static/app.js%00.png", "/static/..%2fapp.py",
                 "/nothing-here", "/api/items/1e3/pixels"):
        response = served.client.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"], path
        assert response.headers["x-content-type-options"] == "nosniff"
    response = served.client.post("/api/items/100000000000000000000/answer", json={"label_index": 0})
    assert response.status_code == 404 and response.headers["x-content-type-options"] == "nosniff"
    wrong_method = served.client.delete("/api/batch")
    assert wrong_method.status_code == 405 and wrong_method.headers["x-content-type-options"] == "nosniff"
    assert served.client.get("/static/app.js").status_code == 200


def test_an_unexpected_failure_is_a_500_with_the_headers_and_nothing_recorded(served, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(served.desk, "batch", broken)
    response = served.client.get("/api/batch")
    assert response.status_code == 500 and "disk on fire" not in response.text
    assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert response.headers["x-content-type-options"] == "nosniff" and "error" in response.json()


# ------------------------------------------------------------------ 11 (data side): a CT's HU and windows
def test_a_ct_is_served_in_hounsfield_units_with_its_window(tmp_path):
    served = Served(build_dicom_run(tmp_path, ct=True))
    try:
        item = served.pending_ids()[0]
        response = served.client.get(f"/api/items/{item}/source")
        info = json.loads(response.headers["x-image-info"])
        assert info["units"] == "HU" and info["windows"] == [{"center": 40.0, "width": 400.0, "name": "SOFT TISSUE"}]
        assert decoded(response).min() < -500  # stored 0 is −1024 HU
    finally:
        served.close()
