"""ROI sources (docs/data.md, "ROI sources"): what the scorer reads is kept apart from the expert's ROIs.

Under ``anatomy`` the scorer reads each item's prior (its organ region), under ``none`` nothing, and
the expert's ROI of every item goes to ``oracle/`` only, where the simulated oracle finds it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import zarr

from xal_core.data import PoolStore, PoolWriter, open_dataset
from xal_core.data.item import Item
from xal_core.data.pool_store import _checksum
from xal_core.loop.oracle.simulated import SimulatedOracle


def _items(n: int = 10, size: tuple[int, int] = (16, 16)) -> list[Item]:
    """Items with distinct expert boxes, priors that never equal them, one with no prior, one
    known-empty ROI and one unknown ROI."""
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        prior = torch.zeros(size, dtype=torch.bool)
        prior[2:14, 1 + i % 3: 15] = True
        roi = torch.tensor([[i % 5 + 1.0, 3.0, i % 5 + 6.0, 9.0]]) if i % 4 else torch.zeros(0, 4)
        if i == 7:
            roi = None
        items.append(Item(f"item-{i}", torch.rand(1, *size, generator=gen), roi, int(i % 4 != 0), {},
                          prior=None if i == 5 else prior))
    return items


def _write(path, items, roi_source: str, roi_format: str = "boxes"):
    with PoolWriter(path, size=(16, 16), channels=1, classes=("neg", "pos"), roi_format=roi_format,
                    source={"kind": "test"}, chunk=4, roi_source=roi_source) as writer:
        for item in items:
            writer.add(item)
    return PoolStore.open(path)


def _scored_rois(pool: PoolStore):
    chunks = list(pool.chunks(verify=True))
    known = torch.cat([chunk.roi.known for chunk in chunks])
    masks = torch.cat([chunk.roi.to_masks() for chunk in chunks])
    return known, masks


def test_anatomy_pool_scores_the_priors_and_keeps_expert_rois_for_the_oracle(tmp_path):
    items = _items()
    pool = _write(tmp_path / "pool", items, "anatomy")
    assert (pool.roi_source, pool.roi_format, pool.oracle_roi_format) == ("anatomy", "mask", "boxes")
    known, masks = _scored_rois(pool)
    for row, item in enumerate(items):
        if item.prior is None:
            assert not known[row], "an item without a prior has no ROI for the scorer (not an empty one)"
        else:
            assert known[row] and torch.equal(masks[row], item.prior)
    oracle_rois = pool.oracle_rois(range(len(items)))
    for item, roi in zip(items, oracle_rois, strict=True):
        assert (roi is None) == (item.roi is None)
        if roi is not None:
            np.testing.assert_array_equal(roi, item.roi.numpy())
    answers = SimulatedOracle.from_pool(pool).annotate([1, 4, 7]).annotations
    assert [a.roi.boxes if a.roi is not None else None for a in answers] == [
        ((2.0, 3.0, 7.0, 9.0),), (), None]
    assert pool.verify() == []


def test_none_pool_gives_the_scorer_no_roi_at_all(tmp_path):
    items = _items()
    pool = _write(tmp_path / "pool", items, "none")
    known, masks = _scored_rois(pool)
    assert not known.any() and not masks.any()
    assert [None if r is None else r.tolist() for r in pool.oracle_rois([1, 7])] == [[[2.0, 3.0, 7.0, 9.0]], None]


def test_expert_pool_scores_the_expert_rois_as_before(tmp_path):
    items = _items()
    pool = _write(tmp_path / "pool", items, "expert")
    assert (pool.roi_source, pool.roi_format) == ("expert", "boxes")
    known, masks = _scored_rois(pool)
    assert known.tolist() == [item.roi is not None for item in items]
    assert masks[1].sum() == 5 * 6


def test_a_damaged_oracle_roi_fails_verification(tmp_path):
    pool = _write(tmp_path / "pool", _items(), "anatomy")
    array = zarr.open_array(str(pool.path / "oracle" / "roi_boxes"), mode="r+")
    array[1, 0, 0] = 42.0
    assert pool.verify() == [0]


def test_roi_source_is_checked_and_recorded(tmp_path):
    with pytest.raises(ValueError, match="roi_source: expected one of expert, anatomy, none"):
        _write(tmp_path / "bad", _items(2), "lungs")
    _write(tmp_path / "pool", _items(4), "anatomy")
    with pytest.raises(ValueError, match="cannot append"):
        PoolWriter(tmp_path / "pool", size=(16, 16), channels=1, classes=("neg", "pos"), roi_format="boxes",
                   source={}, append=True, roi_source="expert")
    bad = _items(1)[0]
    bad = Item("bad", bad.image, bad.roi, 0, {}, prior=torch.ones(8, 8, dtype=torch.bool))
    writer = PoolWriter(tmp_path / "other", size=(16, 16), channels=1, classes=("neg", "pos"), roi_format="boxes",
                        source={}, roi_source="anatomy")
    with pytest.raises(ValueError, match="bad: the anatomy prior must be a bool mask of shape"):
        writer.add(bad)
    writer.close()


def test_a_pool_written_before_roi_sources_reads_and_appends(tmp_path):
    """The layout of pools written before ``oracle/roi_*``: expert ROIs in ``scoring/`` only, the
    oracle checksum over the labels alone, no ``roi_source`` in the manifest."""
    items = _items(6)
    pool = _write(tmp_path / "pool", items, "expert")
    for name in ("roi_known", "roi_packed", "roi_boxes", "roi_counts"):
        shutil.rmtree(pool.path / "oracle" / name)
    manifest = json.loads((pool.path / "manifest.json").read_text())
    for key in ("roi_source", "oracle_roi_format"):
        del manifest[key]
    labels = zarr.open_array(str(pool.path / "oracle" / "labels"), mode="r")
    for entry in manifest["checksums"]:
        entry["oracle"] = _checksum([labels[slice(*entry["rows"])]])
    (pool.path / "manifest.json").write_text(json.dumps(manifest))
    old = PoolStore.open(pool.path)
    assert old.roi_source == "expert" and old.verify() == []
    assert old.oracle_rois([1])[0].tolist() == [[2.0, 3.0, 7.0, 9.0]]
    with PoolWriter(pool.path, size=(16, 16), channels=1, classes=("neg", "pos"), roi_format="boxes", source={},
                    append=True) as writer:
        writer.add(Item("late", torch.rand(1, 16, 16), torch.tensor([[1.0, 1.0, 3.0, 3.0]]), 1, {}))
    grown = PoolStore.open(pool.path)
    assert len(grown) == 7 and grown.verify() == []
    assert grown.oracle_rois([6])[0].tolist() == [[1.0, 1.0, 3.0, 3.0]]


def test_the_shortcut_benchmark_has_an_organ_prior_around_every_lesion():
    data = open_dataset("synthetic", size=(48, 48), n=20)
    for item in data:
        assert item.prior is not None and item.prior.dtype == torch.bool
        assert not (item.roi & ~item.prior).any(), f"{item.id}: lesion pixels outside the organ"
