"""Pool store and ingest on the synthetic shortcut benchmark: real Zarr stores in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xal_cli.main import main
from xal_core.data import Item, PoolStore, open_dataset
from xal_core.data.ingest import ingest
from xal_core.data.pool_store import PoolWriter
from xal_core.scoring import Roi


def test_ingest_round_trip_images_rois_ids_labels(tmp_path):
    data = open_dataset("synthetic", size=(24, 20), n=23, seed=3)
    summary = ingest(data, tmp_path / "pool", chunk=8, workers=2)
    assert (summary.written, summary.skipped, summary.total) == (23, 0, 23)
    pool = PoolStore.open(tmp_path / "pool")
    assert len(pool) == 23 and pool.n_chunks == 3 and pool.verify() == []
    chunks = list(pool.chunks(prefetch=2))
    assert [c.number for c in chunks] == [0, 1, 2] and [len(c.ids) for c in chunks] == [8, 8, 7]
    index = torch.cat([c.index for c in chunks])
    assert index.tolist() == list(range(23))
    for chunk in chunks:
        assert isinstance(chunk.roi, Roi) and chunk.roi.size == (24, 20)
        for row, item_index in enumerate(chunk.index.tolist()):
            item = data[item_index]
            assert chunk.ids[row] == item.id
            torch.testing.assert_close(chunk.images[row], item.image, atol=1e-3, rtol=0)
            assert torch.equal(chunk.roi.masks[row], item.roi)
    labels = pool.oracle_labels(index)
    assert labels.tolist() == [data[i].label for i in range(23)]


def test_labels_are_not_in_what_the_scorer_reads(tmp_path):
    ingest(open_dataset("synthetic", size=(16, 16), n=5), tmp_path / "pool", chunk=4, workers=1)
    chunk = next(PoolStore.open(tmp_path / "pool").chunks())
    assert not any("label" in name for name in vars(chunk))
    assert not (tmp_path / "pool" / "scoring" / "labels").exists()
    assert (tmp_path / "pool" / "oracle" / "labels").exists()


def test_append_extends_a_partial_chunk_and_keeps_checksums(tmp_path):
    first = open_dataset("synthetic", size=(16, 16), n=10, seed=1)
    second = open_dataset("synthetic", size=(16, 16), n=7, seed=1, split="test")
    ingest(first, tmp_path / "pool", chunk=4, workers=1)
    before = json.loads((tmp_path / "pool" / "manifest.json").read_text())["checksums"]
    summary = ingest(second, tmp_path / "pool", append=True, workers=3)
    pool = PoolStore.open(tmp_path / "pool")
    assert summary.total == 17 and len(pool) == 17 and pool.verify() == []
    after = pool.manifest["checksums"]
    assert after[:2] == before[:2] and after[2] != before[2] and len(after) == 5
    ids = [i for c in pool.chunks() for i in c.ids]
    assert ids == [first[i].id for i in range(10)] + [second[i].id for i in range(7)]
    assert len(pool.manifest["sources"]) == 2


def test_items_whose_id_the_pool_holds_are_left_out_with_a_report_line(tmp_path):
    """Appending the same items again, or a dataset that lists an item twice, must not put an id in
    the pool twice: it would be ranked, and shown to the expert, twice."""
    data = open_dataset("synthetic", size=(16, 16), n=6, seed=2)
    ingest(data, tmp_path / "pool", chunk=4, workers=1)
    again = ingest(data, tmp_path / "pool", append=True, workers=2)
    assert (again.written, again.skipped, again.total) == (0, 6, 6)
    report = (tmp_path / "pool" / "ingest_report.tsv").read_text().splitlines()
    assert len(report) == 6 and all("duplicate id" in line for line in report)
    with PoolWriter(tmp_path / "pool", size=(16, 16), channels=1, classes=data.classes, roi_format="mask",
                    source={"test": "duplicates"}, append=True) as writer:
        fresh = open_dataset("synthetic", size=(16, 16), n=1, seed=2, split="val")[0]
        writer.add(fresh)
        with pytest.raises(ValueError, match=f"{fresh.id}: duplicate id"):
            writer.add(fresh)  # twice in one session
    pool = PoolStore.open(tmp_path / "pool")
    ids = [i for c in pool.chunks() for i in c.ids]
    assert len(pool) == 7 and len(set(ids)) == 7 and pool.verify() == []


def test_append_with_other_preprocessing_is_refused(tmp_path):
    ingest(open_dataset("synthetic", size=(16, 16), n=3), tmp_path / "pool", workers=1)
    with pytest.raises(ValueError, match="cannot append"):
        ingest(open_dataset("synthetic", size=(32, 32), n=3), tmp_path / "pool", append=True)
    with pytest.raises(ValueError, match="not empty"):
        ingest(open_dataset("synthetic", size=(16, 16), n=3), tmp_path / "pool")


def test_verify_detects_a_changed_chunk(tmp_path):
    ingest(open_dataset("synthetic", size=(16, 16), n=9), tmp_path / "pool", chunk=4, workers=1)
    import zarr

    images = zarr.open_array(str(tmp_path / "pool" / "scoring" / "images"), mode="r+")
    images[5, 0, 0, 0] = 0.123
    assert PoolStore.open(tmp_path / "pool").verify() == [1]


def test_box_pool_yields_padded_box_rois_and_unknown(tmp_path):
    size = (20, 30)
    items = [
        Item("a", torch.rand(1, *size), torch.tensor([[1.0, 2.0, 10.0, 12.0], [15.0, 0.0, 30.0, 5.0]]), 0),
        Item("b", torch.rand(1, *size), torch.zeros(0, 4), 1),  # known empty
        Item("c", torch.rand(1, *size), None, 1),  # unknown
    ]
    with PoolWriter(tmp_path / "pool", size=size, channels=1, classes=("x", "y"), roi_format="boxes",
                    source={"kind": "test"}, chunk=2, max_boxes=3) as writer:
        for item in items:
            writer.add(item)
    pool = PoolStore.open(tmp_path / "pool")
    rois = [c.roi for c in pool.chunks(prefetch=0)]
    assert rois[0].kind == "boxes" and rois[0].counts.tolist() == [2, 0] and rois[1].counts.tolist() == [-1]
    assert rois[1].known.tolist() == [False]
    expected = Roi.from_boxes([items[0].roi, items[1].roi], size=size).to_masks()
    assert torch.equal(rois[0].to_masks(), expected)
    raw = pool.raw_chunk(0)["roi_packed"]
    assert np.array_equal(raw, np.packbits(expected.numpy(), axis=-1))


def test_too_many_boxes_is_a_clear_error(tmp_path):
    with PoolWriter(tmp_path / "pool", size=(8, 8), channels=1, classes=("x",), roi_format="boxes",
                    source={}, max_boxes=1) as writer, pytest.raises(ValueError, match="at most 1"):
        writer.add(Item("z", torch.rand(1, 8, 8), torch.tensor([[0.0, 0, 2, 2], [3, 3, 4, 4]]), 0))


def test_resume_from_a_chunk(tmp_path):
    ingest(open_dataset("synthetic", size=(16, 16), n=10), tmp_path / "pool", chunk=3, workers=1)
    numbers = [c.number for c in PoolStore.open(tmp_path / "pool").chunks(start=2)]
    assert numbers == [2, 3]


def test_cli_ingest_synthetic_and_append(tmp_path, capsys):
    out = tmp_path / "pool"
    assert main(["ingest", "synthetic", "--out", str(out), "--size", "16", "--option", "n=12", "--chunk", "5",
                 "--quiet"]) == 0
    assert "12 items written, 0 skipped" in capsys.readouterr().out
    assert main(["ingest", "synthetic", "--out", str(out), "--size", "16", "--option", "n=4", "--option",
                 "split=test", "--append", "--quiet"]) == 0
    assert len(PoolStore.open(out)) == 16


def test_cli_bad_arguments_give_one_line(tmp_path, capsys):
    assert main(["ingest", "synthetic", "--out", str(tmp_path / "p"), "--option", "bogus"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert "cannot tell the dataset kind" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "absent"), "--out", str(tmp_path / "p")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    for kind, missing in (("vindr", "train.csv"), ("siim", "train_study_level.csv"), ("generic", "labels.csv"),
                          ("brats", "MICCAI_BraTS2020_TrainingData")):
        assert main(["ingest", str(tmp_path), "--kind", kind, "--out", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err.strip()
        assert missing in err and len(err.splitlines()) == 1
    assert main(["ingest", "synthetic", "--out", str(tmp_path / "q"), "--option", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err


def test_open_missing_pool_is_clear(tmp_path):
    with pytest.raises(ValueError, match="missing manifest.json"):
        PoolStore.open(tmp_path)


def test_a_bad_roi_fails_its_item_alone(tmp_path):
    size = (8, 8)
    good = Item("good", torch.rand(1, *size), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 0)
    outside = Item("outside", torch.rand(1, *size), torch.tensor([[20.0, 20.0, 30.0, 30.0]]), 0)
    mask = Item("mask", torch.rand(1, *size), torch.ones(*size, dtype=torch.bool), 0)
    with PoolWriter(tmp_path / "pool", size=size, channels=1, classes=("x",), roi_format="boxes",
                    source={}, chunk=2) as writer:
        writer.add(good)
        with pytest.raises(ValueError, match="outside: .*entirely outside"):
            writer.add(outside)
        with pytest.raises(ValueError, match="mask ROI cannot go into a pool of boxes"):
            writer.add(mask)
    assert [c.ids for c in PoolStore.open(tmp_path / "pool").chunks()] == [["good"]]


def test_non_finite_image_is_refused_by_name(tmp_path):
    with PoolWriter(tmp_path / "pool", size=(4, 4), channels=1, classes=("x",), roi_format="mask",
                    source={}) as writer, pytest.raises(ValueError, match="nan: image holds NaN"):
        writer.add(Item("nan", torch.full((1, 4, 4), float("nan")), None, 0))
