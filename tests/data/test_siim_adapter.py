"""SIIM-COVID adapter on replicas: study classes per image, safe box parsing, bad rows."""

from __future__ import annotations

import csv

import pytest
import torch

from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.data.replicas.siim import write_siim
from xal_core.data.siim import parse_boxes

SIZE = (40, 48)  # the replicas are 80×96


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    return root, write_siim(root, 5, seed=3)


def test_items_take_their_study_class_and_boxes_scale(replica):
    root, ids = replica
    data = open_dataset("siim", root, size=SIZE)
    assert [item.id for item in data] == ids and data.skipped == []
    items = list(data)
    assert items[0].meta["study"] == items[1].meta["study"]  # a study with two images
    assert items[0].label == items[1].label == 0
    assert [item.label for item in items[2:]] == [1, 2, 3]
    assert items[1].roi.shape == (0, 4)  # "none 1 0 0 1 1": known empty
    with (root / "train_image_level.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for item, row in zip(items, rows, strict=True):
        expected = torch.tensor(parse_boxes(row["boxes"]), dtype=torch.float32).reshape(-1, 4) / 2
        torch.testing.assert_close(item.roi, expected)
        assert item.image.shape == (1, *SIZE)


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo hacked')",
    "[{'x': 1, 'y': 2, 'width': 3}]",
    "[{'x': 1, 'y': 2, 'width': 3, 'height': -1}]",
    "[{'x': 'a', 'y': 2, 'width': 3, 'height': 4}]",
    "[{'x': float('nan'), 'y': 2, 'width': 3, 'height': 4}]",
    "{'x': 1}",
    "[[1, 2, 3, 4]]",
])
def test_parse_boxes_rejects_anything_off_schema(text):
    with pytest.raises(ValueError):
        parse_boxes(text)


def test_parse_boxes_reads_the_kaggle_literal():
    assert parse_boxes("[{'x': 1.5, 'y': 2, 'width': 3, 'height': 4}]") == [(1.5, 2.0, 4.5, 6.0)]
    assert parse_boxes("") == [] and parse_boxes("nan") == []


def test_bad_rows_are_skipped_and_counted(tmp_path):
    ids = write_siim(tmp_path, 4, seed=4)
    path = tmp_path / "train_image_level.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[2]["boxes"] = "[{'x': 1, 'y': oops}]"
    rows.append({"id": "9.9.9_image", "boxes": "", "label": "none 1 0 0 1 1", "StudyInstanceUID": "9.9"})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = open_dataset("siim", tmp_path, size=SIZE)
    reasons = " | ".join(skip.reason for skip in data.skipped)
    assert "unparseable boxes" in reasons and "not in train_study_level.csv" in reasons
    summary = ingest(data, tmp_path / "pool", workers=1)
    assert (summary.written, summary.skipped) == (3, 2)
    assert ids[2] not in {item.id for item in data}


def test_wrong_root_names_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing train_study_level.csv"):
        open_dataset("siim", tmp_path, size=SIZE)
