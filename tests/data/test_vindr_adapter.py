"""VinDr-CXR adapter on replicas in the Kaggle and PhysioNet layouts (real DICOM via pydicom)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from xal_core.data import PoolStore, open_dataset
from xal_core.data.ingest import ingest
from xal_core.data.item import ItemError
from xal_core.data.replicas.vindr import write_vindr
from xal_core.scoring import Roi

SIZE = (48, 40)  # the replicas are 96×80: boxes scale by 1/2


def _rows(root):
    with (root / "train.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("vindr_kaggle")
    return root, write_vindr(root, 6, seed=1)


def test_no_finding_is_known_empty_and_boxes_follow_the_image(kaggle):
    root, ids = kaggle
    data = open_dataset("vindr", root, size=SIZE)
    assert len(data) == 6 and data.skipped == [] and data.classes == ("no_finding", "abnormal")
    by_id = {item.id: item for item in data}
    assert set(by_id) == set(ids)
    first = by_id[ids[0]]  # image 0 is "No finding" for all readers
    assert first.label == 0 and first.roi is not None and first.roi.shape == (0, 4)
    rows = _rows(root)
    for item in by_id.values():
        assert item.image.shape == (1, *SIZE)
        mine = [r for r in rows if r["image_id"] == item.id and r["class_name"] != "No finding"]
        assert item.label == int(bool(mine)) and item.roi.shape == (len(mine), 4)
        expected = torch.tensor([[float(r[k]) / 2 for k in ("x_min", "y_min", "x_max", "y_max")] for r in mine])
        torch.testing.assert_close(item.roi, expected.reshape(-1, 4))
        if mine:  # the replica paints findings bright: the boxes land on them after rescaling
            inside = Roi.from_boxes([item.roi], size=SIZE).to_masks()[0]
            assert item.image[0][inside].mean() > item.image[0][~inside].mean() + 0.2


def test_physionet_layout_gives_the_same_items(tmp_path, kaggle):
    write_vindr(tmp_path, 6, seed=1, layout="physionet")
    a = open_dataset("vindr", kaggle[0], size=SIZE)
    b = open_dataset("vindr", tmp_path, size=SIZE)
    assert b.options["layout"] == "physionet"
    for x, y in zip(a, b, strict=True):
        assert x.id == y.id and x.label == y.label and torch.equal(x.roi, y.roi)
        torch.testing.assert_close(x.image, y.image)


def test_majority_merge_is_a_mask_inside_the_union(kaggle):
    union = open_dataset("vindr", kaggle[0], size=SIZE)
    majority = open_dataset("vindr", kaggle[0], size=SIZE, merge="majority")
    assert majority.roi_format == "mask"
    for u, m in zip(union, majority, strict=True):
        union_mask = Roi.from_boxes([u.roi], size=SIZE).to_masks()[0]
        assert m.roi.dtype == torch.bool and not (m.roi & ~union_mask).any()
        assert bool(m.roi.any()) == bool(u.label)  # every replica finding has ≥ 2 of 3 readers


def test_a_chosen_finding_set(kaggle):
    root, _ = kaggle
    data = open_dataset("vindr", root, size=SIZE, findings=["Atelectasis"])
    rows = _rows(root)
    for item in data:
        has = any(r["image_id"] == item.id and r["class_name"] == "Atelectasis" for r in rows)
        assert item.label == int(has) and (item.roi.shape[0] > 0) == has


def test_bad_rows_and_files_are_skipped_with_reasons(tmp_path):
    ids = write_vindr(tmp_path, 4, seed=2)
    with (tmp_path / "train.csv").open("a", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["0" * 32, "Nodule/Mass", 8, "R1", 1, 1, 5, 5])  # unknown id: no file
        out.writerow([ids[1], "Nodule/Mass", 8, "R1", "abc", 1, 5, 5])  # unparseable box
        out.writerow([ids[2], "Nodule/Mass", 8, "R1", 10, 10, 500, 60])  # outside the 96×80 image
    dicom = tmp_path / "train" / f"{ids[3]}.dicom"
    dicom.write_bytes(dicom.read_bytes()[:-3000])  # truncated
    data = open_dataset("vindr", tmp_path, size=SIZE)
    reasons = {skip.path.split("/")[-1]: skip.reason for skip in data.skipped}
    assert "missing" in reasons[f"{'0' * 32}.dicom"] and "unparseable box" in reasons[f"{ids[1]}.dicom"]
    with pytest.raises(ItemError, match="outside"):
        next(item for item in data if item.id == ids[2])
    summary = ingest(data, tmp_path / "pool", workers=2)
    assert (summary.written, summary.skipped) == (1, 4)
    report = summary.report.read_text().splitlines()
    assert len(report) == 4 and all("\t" in line for line in report)
    assert any(ids[3] in line for line in report)
    pool = PoolStore.open(tmp_path / "pool")
    assert len(pool) == 1 and pool.manifest["skipped"] == 4 and next(pool.chunks()).ids == [ids[0]]


def test_wrong_root_names_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing train.csv"):
        open_dataset("vindr", tmp_path, size=SIZE)


def test_ingest_box_pool_round_trip(tmp_path, kaggle):
    data = open_dataset("vindr", kaggle[0], size=SIZE)
    ingest(data, tmp_path / "pool", chunk=4, workers=1)
    chunks = list(PoolStore.open(tmp_path / "pool").chunks())
    counts = torch.cat([c.roi.counts for c in chunks])
    assert counts.tolist() == [item.roi.shape[0] for item in data]
    assert np.all(counts.numpy() >= 0)  # no finding = 0 boxes, known
