"""Generic labels.csv adapter with real files: nibabel's and pydicom's bundled samples, PNGs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from xal_core.data import PoolStore, open_dataset
from xal_core.data.ingest import ingest

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"


def _write(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "roi", "split", "slice"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture()
def folder(tmp_path):
    shutil.copy(NIBABEL_DATA / "anatomical.nii", tmp_path / "anatomical.nii")  # 33×41×25
    shutil.copy(PYDICOM_DATA / "CT_small.dcm", tmp_path / "ct.dcm")  # 128×128
    image = np.zeros((20, 30), dtype=np.uint8)
    image[5:10, 10:20] = 200
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray((image > 0).astype(np.uint8) * 255).save(tmp_path / "a_mask.png")
    _write(tmp_path, [
        {"image": "a.png", "label": "lesion", "roi": "a_mask.png", "split": "", "slice": ""},
        {"image": "ct.dcm", "label": "normal", "roi": "[]", "split": "pool", "slice": ""},
        {"image": "anatomical.nii", "label": "lesion", "roi": "[[4, 8, 20, 16]]", "split": "pool", "slice": "12"},
        {"image": "anatomical.nii", "label": "normal", "roi": "", "split": "test", "slice": "3"},
    ])
    return tmp_path


def test_mixed_folder_reads_every_file_type(folder):
    data = open_dataset("generic", folder, size=(16, 24))
    assert data.classes == ("lesion", "normal") and len(data) == 3 and data.roi_format == "mask"
    png, ct, nii = list(data)
    assert png.id == "a.png" and png.label == 0 and png.image.shape == (1, 16, 24)
    expected = torch.zeros(20, 30, dtype=torch.bool)
    expected[5:10, 10:20] = True
    assert torch.equal(png.roi, torch.nn.functional.interpolate(expected[None, None].float(), size=(16, 24),
                                                                 mode="nearest-exact")[0, 0] > 0.5)
    assert ct.label == 1 and not ct.roi.any()  # "[]": known empty, as a mask
    assert nii.id == "anatomical.nii#12" and nii.roi.any()
    volume = np.asarray(nib.load(folder / "anatomical.nii").dataobj)[:, :, 12].T.astype(float)
    assert nii.meta["source_shape"] == list(volume.shape)


def test_box_only_split_keeps_boxes_in_the_output_frame(folder):
    data = open_dataset("generic", folder, size=(82, 66), split="test")
    assert data.roi_format == "boxes" and len(data) == 1 and data[0].roi is None  # unknown ROI
    boxes_only = folder / "boxes"
    boxes_only.mkdir()
    shutil.copy(folder / "anatomical.nii", boxes_only / "anatomical.nii")
    _write(boxes_only, [{"image": "anatomical.nii", "label": "x", "roi": "[[4, 8, 20, 16]]", "split": "",
                         "slice": ""}])
    item = open_dataset("generic", boxes_only, size=(82, 66))[0]  # 41×33 image, doubled
    torch.testing.assert_close(item.roi, torch.tensor([[8.0, 16.0, 40.0, 32.0]]))


def test_bad_rows_are_skipped_and_ingest_counts_them(folder):
    with (folder / "labels.csv").open("a", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["missing.png", "lesion", "", "", ""])
        out.writerow(["a.png", "lesion", "[[1, 2, 3]]", "", ""])
        out.writerow(["a.png", "lesion", "", "train", ""])
        out.writerow(["a.png", "lesion", "[[0, 0, 300, 5]]", "", ""])  # outside the 30-wide image
    data = open_dataset("generic", folder, size=(16, 16))
    assert len(data.skipped) == 3
    summary = ingest(data, folder / "pool", workers=1)
    assert (summary.written, summary.skipped) == (3, 4)
    assert len(PoolStore.open(folder / "pool")) == 3


def test_wrong_root(tmp_path):
    with pytest.raises(ValueError, match="missing labels.csv"):
        open_dataset("generic", tmp_path, size=(16, 16))
