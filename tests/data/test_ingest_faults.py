"""Faulty and hostile input to ``xal ingest`` (issue 15, items 8 and 10): one bad row or file is one
report line, never a lost ingest; paths never leave the dataset folder; big images cannot blow up
memory; a killed ingest never leaves a pool that refuses a rerun.

Real files throughout: PNGs (the large ones written row by row with zlib, so a 20 000² image is a
400 kB file made in about a second), DICOM from pydicom and the VinDr replica writer, NIfTI from
nibabel, and the real CLI, in-process or as a subprocess that is SIGKILLed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from xal_cli.main import main
from xal_core.data import Item, PoolStore, open_dataset
from xal_core.data.ingest import ingest
from xal_core.data.item import IndexedDataset
from xal_core.data.replicas.vindr import write_vindr

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
ROOT = Path(__file__).resolve().parents[2]


def _constant_png(path: Path, width: int, height: int, value: int = 0) -> Path:
    """A valid 8-bit grey PNG of one value, compressed row by row (no full image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" + bytes([value]) * width  # filter byte "none", then the pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _small_png(path: Path, seed: int) -> Path:
    image = np.random.default_rng(seed).integers(0, 255, size=(20, 24), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return path


def _labels(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "roi"])
        writer.writeheader()
        writer.writerows(rows)


def _ten_good(root: Path) -> list[dict[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    return [{"image": _small_png(root / f"good{i}.png", i).name, "label": "ab"[i % 2], "roi": "[]"}
            for i in range(10)]


def _report(pool: Path) -> dict[str, str]:
    lines = (pool / "ingest_report.tsv").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines)


def _ingest(*args: str) -> int:
    return main(["ingest", *args, "--size", "16", "--quiet", "--workers", "2"])


def _xal(*args: str) -> list[str]:
    return [sys.executable, "-m", "xal_cli.main", *args]


def _ids(pool: Path) -> list[str]:
    return [i for chunk in PoolStore.open(pool).chunks() for i in chunk.ids]


# --- item 8: one bad row sinks an ingest ------------------------------------------------------------------


def test_an_absolute_path_is_one_report_line_and_the_good_items_go_in(tmp_path):
    outside = _small_png(tmp_path / "outside.png", 99)
    root = tmp_path / "data"
    rows = _ten_good(root)
    rows.insert(4, {"image": str(outside), "label": "a", "roi": "[]"})  # before today's fix: ValueError, rc 2
    rows.insert(7, {"image": str((root / "good1.png").resolve()), "label": "a", "roi": "[]"})  # absolute, inside
    _labels(root, rows)
    assert _ingest(str(root), "--out", str(tmp_path / "pool")) == 0
    assert sorted(_ids(tmp_path / "pool")) == sorted(f"good{i}.png" for i in range(10))
    report = "\n".join(_report(tmp_path / "pool").values())
    assert report.count("is absolute") == 2


def test_paths_that_escape_the_root_are_refused_per_item(tmp_path):
    outside = _small_png(tmp_path / "outside.png", 99)
    _small_png(tmp_path / "outside_mask.png", 98)
    root = tmp_path / "data"
    rows = _ten_good(root)
    (root / "sub").mkdir()
    (root / "link.png").symlink_to(outside)  # a symlink inside the folder, its target outside
    (root / "sub" / "inner.png").symlink_to(root / "good0.png")  # stays inside: fine
    rows += [
        {"image": "../outside.png", "label": "a", "roi": "[]"},
        {"image": "sub/../../outside.png", "label": "a", "roi": "[]"},
        {"image": "link.png", "label": "b", "roi": "[]"},
        {"image": "good3.png", "label": "a", "roi": "../outside_mask.png"},  # the ROI mask escapes
        {"image": "sub/inner.png", "label": "b", "roi": ""},
    ]
    _labels(root, rows)
    assert _ingest(str(root), "--out", str(tmp_path / "pool")) == 0
    ids = _ids(tmp_path / "pool")
    assert len(ids) == 11 and "sub/inner.png" in ids
    assert not any("outside" in i or "link" in i for i in ids)
    refused = [reason for reason in _report(tmp_path / "pool").values() if "outside the dataset folder" in reason]
    assert len(refused) == 4


def test_a_decompression_bomb_png_is_one_report_line(tmp_path):
    root = tmp_path / "data"
    rows = _ten_good(root)
    _constant_png(root / "bomb.png", 20_000, 20_000)  # ~400 kB; Pillow raised DecompressionBombError
    rows.insert(3, {"image": "bomb.png", "label": "a", "roi": "[]"})
    _labels(root, rows)
    assert _ingest(str(root), "--out", str(tmp_path / "pool")) == 0
    assert len(_ids(tmp_path / "pool")) == 10
    reason = next(reason for path, reason in _report(tmp_path / "pool").items() if path.endswith("bomb.png"))
    assert "20000 × 20000 = 400,000,000 pixels" in reason and "--max-pixels" in reason


def test_big_pngs_are_refused_or_decoded_within_bounded_memory(tmp_path):
    """Peak RSS of a real ``xal ingest`` process, above what its imports take.

    The 12 000² PNG (144 MP) is above the default limit and must not be decoded: even one byte a
    pixel would be 144 MB. The 6 000² one (36 MP) is below it and decoded; the former float64
    pipeline held ~29 bytes a pixel (~1 GB), the current one about 6 (~220 MB).
    """
    root = tmp_path / "data"
    rows = _ten_good(root)
    _constant_png(root / "huge.png", 12_000, 12_000)
    _constant_png(root / "large.png", 6_000, 6_000, value=7)
    rows += [{"image": "huge.png", "label": "a", "roi": "[]"}, {"image": "large.png", "label": "b", "roi": "[]"}]
    _labels(root, rows)
    probe = (
        "import resource, sys\n"
        "from xal_cli.main import build_parser, main\n"
        "import xal_core.data.generic, xal_core.data.ingest, torch\n"
        "build_parser(); torch.nn.functional.interpolate(torch.zeros(1, 1, 64, 64), size=(16, 16), mode='bilinear',"
        " antialias=True)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "code = main(sys.argv[1:])\n"
        "print('RSS', before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe, "ingest", str(root), "--out", str(tmp_path / "pool"),
                           "--size", "16", "--quiet", "--workers", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    before, peak, code = (int(v) for v in done.stdout.split("RSS", 1)[1].split())
    grown_mb = (peak - before) / 1024  # ru_maxrss is in kB on Linux
    assert code == 0 and grown_mb < 400, f"peak RSS grew by {grown_mb:.0f} MB"
    assert time.monotonic() - started < 60
    assert sorted(_ids(tmp_path / "pool")) == sorted([f"good{i}.png" for i in range(10)] + ["large.png"])
    reasons = _report(tmp_path / "pool")
    assert len(reasons) == 1 and "12000 × 12000" in next(iter(reasons.values()))


def test_max_pixels_applies_to_png_nifti_and_dicom_headers(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(NIBABEL_DATA / "anatomical.nii", root / "anatomical.nii")  # 33×41 slices: 1 353 pixels
    shutil.copy(PYDICOM_DATA / "CT_small.dcm", root / "ct.dcm")  # 128×128: 16 384
    _constant_png(root / "wide.png", 40, 40, value=3)  # 1 600
    _small_png(root / "small.png", 1)  # 480
    _labels(root, [{"image": name, "label": "a", "roi": "[]"}
                   for name in ("anatomical.nii", "ct.dcm", "wide.png", "small.png")])
    assert _ingest(str(root), "--out", str(tmp_path / "pool"), "--max-pixels", "1500") == 0
    assert sorted(_ids(tmp_path / "pool")) == ["anatomical.nii", "small.png"]
    reasons = _report(tmp_path / "pool")
    assert sorted(Path(p).name for p in reasons) == ["ct.dcm", "wide.png"]
    assert all("above the limit of 1,500" in reason for reason in reasons.values())
    assert PoolStore.open(tmp_path / "pool").manifest["sources"][0]["options"]["max_pixels"] == 1500


def test_max_pixels_must_be_positive_and_fit_the_kind(tmp_path, capsys):
    _labels(tmp_path, _ten_good(tmp_path))
    assert _ingest(str(tmp_path), "--out", str(tmp_path / "p1"), "--max-pixels", "0") == 2
    assert main(["ingest", "synthetic", "--out", str(tmp_path / "p2"), "--max-pixels", "10", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_pixels: expected a positive integer" in err and "--max-pixels applies to the kinds" in err
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


def test_short_csv_rows_are_report_lines(tmp_path):
    root = tmp_path / "data"
    _labels(root, _ten_good(root))
    with (root / "labels.csv").open("a") as handle:
        handle.write("good1.png\n")  # no label, no roi: csv gives None for them
    assert _ingest(str(root), "--out", str(tmp_path / "pool")) == 0
    assert len(_ids(tmp_path / "pool")) == 10 and list(_report(tmp_path / "pool").values()) == ["empty label"]
    vindr = tmp_path / "vindr"
    ids = write_vindr(vindr, 3, seed=6)
    _append_rows(vindr, [[ids[2]], [ids[1], "Cardiomegaly", 3]])
    assert main(["ingest", str(vindr), "--out", str(tmp_path / "vindr_pool"), "--size", "24", "--quiet"]) == 0
    assert _ids(tmp_path / "vindr_pool") == [ids[0]]
    assert [r.split(": ")[-1] for r in _report(tmp_path / "vindr_pool").values()] == ["too few fields"] * 2


class _Flaky(IndexedDataset):
    """Two good items around one whose loading raises what no adapter anticipates."""

    kind = "flaky"

    def __init__(self) -> None:
        super().__init__((8, 8), ("a", "b"), "boxes", {})
        self.records = [0, 1, 2]

    def load(self, record: int) -> Item:
        if record == 1:
            raise RuntimeError("decoder bug")
        return Item(f"item{record}", torch.zeros(1, 8, 8), None, record % 2)


def test_any_exception_while_loading_an_item_is_that_item_alone(tmp_path):
    summary = ingest(_Flaky(), tmp_path / "pool", workers=2)
    assert (summary.written, summary.skipped) == (2, 1)
    assert _report(tmp_path / "pool") == {"item 1": "unexpected RuntimeError: decoder bug"}


# --- item 8: a killed ingest ------------------------------------------------------------------------------


def _kill_when(command: list[str], ready, timeout: float = 90) -> None:
    """Start ``command``, SIGKILL it as soon as ``ready()`` holds (it must still be running)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"the ingest ended (rc {process.returncode}) before it could be killed: "
                            f"{process.stderr.read().decode()[-1000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the ingest wrote nothing in time")
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def _image_chunks(folder: Path) -> int:
    """Image chunk files written anywhere under ``folder`` (the pool, or a hidden staging folder)."""
    return sum(1 for _ in folder.glob("**/scoring/images/c/*"))


def test_a_killed_new_ingest_leaves_nothing_and_the_same_command_reruns(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "pool"
    command = _xal("ingest", "synthetic", "--out", str(out), "--size", "32", "--option", "n=3000",
                   "--chunk", "64", "--workers", "1", "--quiet")
    _kill_when(command, lambda: _image_chunks(work) >= 3)
    assert not out.exists()  # nothing at --out: no pool that readers would open or reruns refuse
    with pytest.raises(ValueError, match="not a pool store"):
        PoolStore.open(out)
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "interrupted earlier ingest" in rerun.stdout
    pool = PoolStore.open(out)
    assert len(pool) == 3000 and pool.verify() == []
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == [".pool.ingest-lock"]


def test_a_killed_append_leaves_the_previous_pool_and_reruns(tmp_path):
    out = tmp_path / "pool"
    ingest(open_dataset("synthetic", size=(32, 32), n=100, seed=4), out, chunk=64, workers=1)  # 2 chunks, last partial
    before_manifest = (out / "manifest.json").read_text()
    before_ids = _ids(out)
    before_report = (out / "ingest_report.tsv").read_bytes()
    command = _xal("ingest", "synthetic", "--out", str(out), "--append", "--size", "32", "--option", "n=3000",
                   "--option", "split=test", "--workers", "1", "--quiet")
    _kill_when(command, lambda: _image_chunks(out) >= 5)
    assert (out / "manifest.json").read_text() == before_manifest
    pool = PoolStore.open(out)
    assert len(pool) == 100 and pool.verify() == [] and _ids(out) == before_ids
    assert (out / "ingest_report.tsv").read_bytes() == before_report
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    pool = PoolStore.open(out)
    assert len(pool) == 3100 and pool.verify() == [] and _ids(out)[:100] == before_ids
    assert json.loads((out / "manifest.json").read_text())["count"] == 3100


def test_a_second_ingest_into_a_pool_being_written_is_refused(tmp_path):
    from xal_core.data.staging import ingest_target

    data = open_dataset("synthetic", size=(16, 16), n=3)
    with ingest_target(tmp_path / "pool", append=False) as target:
        with pytest.raises(ValueError, match="another xal ingest is writing this pool"):
            ingest(data, tmp_path / "pool", workers=1)
        assert target.path.is_dir()  # the first writer's staging folder was left alone
    assert not (tmp_path / "pool").exists() or not any((tmp_path / "pool").iterdir())


def test_a_failed_ingest_cleans_up_and_a_rerun_works(tmp_path):
    data = open_dataset("synthetic", size=(16, 16), n=5)

    def stop(done: int, skipped: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(data, tmp_path / "pool", workers=1, on_progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pool.ingest-lock"]
    assert ingest(data, tmp_path / "pool", workers=1).total == 5


# --- VinDr ids and classes (items 8 and 10) --------------------------------------------------------------


def _append_rows(root: Path, rows: list[list[object]]) -> None:
    with (root / "train.csv").open("a", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_vindr_unknown_classes_are_reported_per_image(tmp_path):
    root = tmp_path / "vindr"
    ids = write_vindr(root, 5, seed=3)
    # columns: image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max
    _append_rows(root, [
        [ids[1], "Cardiomegally", 3, "R1", 10, 10, 30, 30],  # misspelt name
        [ids[2], "Cardiomegaly", 99, "R1", 10, 10, 30, 30],  # unknown id
        [ids[3], "Cardiomegaly", 5, "R1", 10, 10, 30, 30],  # id of another class
    ])
    assert main(["ingest", str(root), "--out", str(tmp_path / "pool"), "--size", "24", "--quiet"]) == 0
    assert sorted(_ids(tmp_path / "pool")) == sorted([ids[0], ids[4]])
    reasons = {Path(path).stem: reason for path, reason in _report(tmp_path / "pool").items()}
    assert "unknown class name 'Cardiomegally'" in reasons[ids[1]]
    assert "class_id '99' does not match" in reasons[ids[2]]
    assert "class_id '5' does not match class name 'Cardiomegaly' (its id is 3)" in reasons[ids[3]]
    assert all("train.csv line" in reasons[i] for i in ids[1:4])


def test_vindr_findings_option_must_name_known_findings(tmp_path):
    write_vindr(tmp_path, 2, seed=3)
    with pytest.raises(ValueError, match="not findings of the VinDr-CXR kaggle layout"):
        open_dataset("vindr", tmp_path, size=(24, 24), findings=["Cardiomegally"])
    physionet = tmp_path / "physionet"
    write_vindr(physionet, 2, seed=3, layout="physionet")
    assert open_dataset("vindr", physionet, size=(24, 24), findings=["Rib fracture"]).classes == ("negative",
                                                                                                 "positive")


def test_vindr_ids_that_escape_the_root_are_refused(tmp_path):
    root = tmp_path / "vindr"
    ids = write_vindr(root, 4, seed=5)
    shutil.copy(root / "train" / f"{ids[0]}.dicom", tmp_path / "outside.dicom")
    (root / "train" / "linked.dicom").symlink_to(tmp_path / "outside.dicom")
    _append_rows(root, [
        ["../../outside", "No finding", 14, "R1", "", "", "", ""],
        [str(tmp_path / "outside"), "No finding", 14, "R1", "", "", "", ""],
        ["linked", "No finding", 14, "R1", "", "", "", ""],
    ])
    assert main(["ingest", str(root), "--out", str(tmp_path / "pool"), "--size", "24", "--quiet"]) == 0
    assert sorted(_ids(tmp_path / "pool")) == sorted(ids)
    reasons = list(_report(tmp_path / "pool").values())
    assert sum("is not a plain file name; refused" in reason for reason in reasons) == 2
    assert sum("outside the dataset folder" in reason for reason in reasons) == 1
