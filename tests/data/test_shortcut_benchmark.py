"""The synthetic shortcut benchmark: determinism, the shortcut's rate, ROI vs marker placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xal_core.data import open_dataset
from xal_core.data.shortcut import ShortcutBenchmark


def test_deterministic_and_independent_of_order():
    a = open_dataset("synthetic", size=(32, 32), n=10, seed=5)
    b = open_dataset("synthetic", size=(32, 32), n=10, seed=5)
    assert torch.equal(a[7].image, b[7].image) and a[7].label == b[7].label
    assert not torch.equal(a[7].image, open_dataset("synthetic", size=(32, 32), n=10, seed=6)[7].image)
    assert a[3].image.shape == (1, 32, 32) and a[3].image.dtype == torch.float32


def test_marker_agrees_in_pool_and_never_in_test():
    pool = open_dataset("synthetic", size=(32, 32), n=400, shortcut=0.8, classes=3)
    agree = np.mean([item.meta["shortcut_agrees"] for item in pool])
    assert 0.72 < agree < 0.88
    test = open_dataset("synthetic", size=(32, 32), n=100, split="test", classes=3)
    assert not any(item.meta["shortcut_agrees"] for item in test)
    assert {item.label for item in test} == {0, 1, 2}


def test_val_shortcut_changes_only_the_validation_markers():
    """A marker-free validation split (``val_shortcut`` 1/K): its markers agree about half the time,
    its lesions, labels and noise are the same draws, and the pool and test splits do not change."""
    plain = ShortcutBenchmark((32, 32), n=300, split="val")
    curated = ShortcutBenchmark((32, 32), n=300, split="val", val_shortcut=0.5)
    assert np.mean([plain[i].meta["shortcut_agrees"] for i in range(300)]) > 0.95
    assert 0.4 < np.mean([curated[i].meta["shortcut_agrees"] for i in range(300)]) < 0.6
    for i in range(20):
        assert plain[i].label == curated[i].label and torch.equal(plain[i].roi, curated[i].roi)
    for split in ("pool", "test"):
        a, b = ShortcutBenchmark((32, 32), n=5, split=split), ShortcutBenchmark((32, 32), n=5, split=split, val_shortcut=0.5)
        assert all(torch.equal(a[i].image, b[i].image) for i in range(5)), split
    with pytest.raises(ValueError, match="val_shortcut"):
        ShortcutBenchmark((32, 32), n=1, val_shortcut=2.0)


def test_marker_lies_outside_the_roi_and_the_lesion_carries_the_class():
    data = open_dataset("synthetic", size=(48, 48), n=30, noise=0.0, contrast=0.3)
    for item in data:
        roi = item.roi
        assert roi.dtype == torch.bool and roi.any()
        # the marker pixels are the only ones at 0.95 and none is inside the ROI
        marker = (item.image[0] - 0.95).abs() < 1e-6
        assert marker.any() and not (marker & roi).any()
    solid = [item for item in data if item.label == 0]
    ring = [item for item in data if item.label == 1]
    assert solid and ring
    # inside the lesion, class 0 is flat over the background while class 1 varies with the radius
    def spread(item):
        return float(item.image[0][item.roi].std())
    assert np.mean([spread(i) for i in solid]) < np.mean([spread(i) for i in ring])


def test_box_roi_is_the_lesion_bounding_box():
    masks = open_dataset("synthetic", size=(40, 40), n=3, seed=2)
    boxes = open_dataset("synthetic", size=(40, 40), n=3, seed=2, roi="boxes")
    for m, b in zip(masks, boxes, strict=True):
        ys, xs = torch.nonzero(m.roi, as_tuple=True)
        assert b.roi.tolist() == [[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]]


@pytest.mark.parametrize("bad", [dict(split="train"), dict(classes=1), dict(shortcut=1.5), dict(roi="poly"),
                                 dict(size=(8, 8))])
def test_bad_parameters_are_rejected(bad):
    size = bad.pop("size", (32, 32))
    with pytest.raises(ValueError):
        open_dataset("synthetic", size=size, n=2, **bad)


@pytest.mark.parametrize("size, scale", [((16, 16), 2.5), ((64, 64), 2.5), ((97, 131), 3.0), ((64, 64), 1.0)])
def test_lesion_never_touches_the_marker_glyph(size, scale):
    """The ROI stays clear of the marker's box at every size and glyph scale (lesions are redrawn)."""
    data = ShortcutBenchmark(size, n=300, split="pool", marker_scale=scale, seed=7)
    for index in range(len(data)):
        item = data[index]
        rows, cols = data._marker_box(item.meta["marker_class"])
        assert item.roi.any(), f"item {index}: empty lesion"
        assert not item.roi[rows, cols].any(), f"item {index}: lesion overlaps the marker at {size}, scale {scale}"


def test_marker_scale_is_validated():
    with pytest.raises(ValueError, match="marker_scale"):
        ShortcutBenchmark((64, 64), n=1, marker_scale=5.0)
