"""cxr-sim: synthetic chest X-rays on real RSNA / VinDr / v7labs annotation geometry.

The tables come from the ``torchxrayvision`` wheel (the ``cxr`` extra, installed with ``--no-deps``);
without it every test that needs them is skipped with that reason, and only the error message is
checked. Splits are generated at 32² where the pixels do not matter (the statistics do), once per
module.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from xal_core.data import cxr_tables
from xal_core.data.cxr_sim import DEFAULT_FINDINGS, rsna_sim, vindr_sim

needs_tables = pytest.mark.skipif(not cxr_tables.available(),
                                  reason=f"torchxrayvision's data files are missing: {cxr_tables.EXTRA_HINT}")


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchxrayvision" else real(name, *a))
    assert not cxr_tables.available()
    with pytest.raises(ImportError, match=r"install xal\[cxr\] \(torchxrayvision\) for the cxr-sim benchmark"):
        cxr_tables.data_file("kaggle_stage_2_train_labels.csv.zip")


@pytest.fixture(scope="module")
def rsna_splits():
    return {split: rsna_sim(split, n, size=32, seed=3) for split, n in (("pool", 3000), ("val", 2000), ("test", 2000))}


@pytest.fixture(scope="module")
def vindr_splits():
    return {split: vindr_sim(split, 1000, size=32, seed=3) for split in ("pool", "test")}


# ----------------------------------------------------------------------------------------- tables


@needs_tables
def test_rsna_table_facts():
    t = cxr_tables.load_rsna()
    assert len(t) == 26684 and int(t.label.sum()) == 6012 and len(t.boxes) == 9555
    assert abs(t.label.mean() - 0.2253) < 1e-3
    ap = t.view == 1
    assert int(ap.sum()) == 12173
    assert abs(t.label[ap].mean() - 0.383) < 2e-3 and abs(t.label[~ap].mean() - 0.093) < 2e-3
    counts = np.diff(t.box_start)
    assert np.array_equal(counts > 0, t.label == 1) and counts.max() == 4
    assert (t.boxes[:, 2:] > 0).all()
    assert (t.boxes[:, :2] >= 0).all() and (t.boxes[:, :2] + t.boxes[:, 2:] <= cxr_tables.RSNA_FRAME).all()


@needs_tables
def test_vindr_table_in_a_unit_frame_with_three_readers():
    t = cxr_tables.load_vindr()
    assert len(t) == 15000 and t.reader_ids.shape == (15000, 3) and len(t.class_names) == 15
    boxed = ~np.isnan(t.box[:, 0])
    assert int(boxed.sum()) == 36096
    assert (t.box[boxed] >= 0).all() and (t.box[boxed] <= 1).all()
    assert (t.box[boxed, 2] > t.box[boxed, 0]).all() and (t.box[boxed, 3] > t.box[boxed, 1]).all()
    assert (t.frame >= cxr_tables.VINDR_FRAME).all() and (t.frame > cxr_tables.VINDR_FRAME).mean() < 0.01
    image = np.repeat(np.arange(len(t)), np.diff(t.start))
    k = int(image[np.flatnonzero(t.class_id == t.class_names.index("Cardiomegaly"))[0]])
    readings = t.readings(k)
    assert [r for r, _ in readings] == list(t.reader_ids[k])
    boxes = [box for _, marks in readings for name, box in marks if name == "Cardiomegaly"]
    assert boxes and all(box.shape == (4,) and (box >= 0).all() and (box <= 1).all() for box in boxes)
    normal = int(image[np.flatnonzero(t.class_id == 14)[0]])
    assert all(marks == (("No finding", None),) for _, marks in t.readings(normal))


@needs_tables
def test_lung_shapes_are_two_real_lungs():
    shapes = cxr_tables.load_lung_shapes(64)
    assert len(shapes) >= 400 and shapes.masks.shape[1:] == (64, 64) and shapes.masks.dtype == bool
    assert len(shapes) + len(shapes.skipped) == 517
    fill = shapes.masks.mean((1, 2))
    assert (fill > 0.3).all() and (fill < 0.95).all()
    left, right = shapes.sides[:, 0], shapes.sides[:, 1]
    assert (left[:, 2] <= right[:, 0]).all()  # the image-left lung ends before the image-right one starts
    assert 0.5 < np.median(shapes.aspect) < 1.2


# ----------------------------------------------------------------------------------------- RSNA


@needs_tables
def test_pool_keeps_the_tables_prevalence_and_view_confound(rsna_splits):
    pool, table = rsna_splits["pool"], cxr_tables.load_rsna()
    assert abs(pool.labels.mean() - table.label.mean()) < 0.03
    ap = pool.view == 1
    assert abs(pool.labels[ap].mean() - table.label[table.view == 1].mean()) < 0.05
    assert abs(pool.labels[~ap].mean() - table.label[table.view == 0].mean()) < 0.04
    assert pool.labels[ap].mean() - pool.labels[~ap].mean() > 0.2  # the confound a model can use
    assert len(set(pool.patient_ids)) == len(pool)  # 3 000 < the pool's 18 678 patients


@needs_tables
@pytest.mark.parametrize("split", ["val", "test"])
def test_heldout_splits_decorrelate_view_and_label(rsna_splits, split):
    data = rsna_splits[split]
    ap = data.view == 1
    assert abs(ap.mean() - 0.5) < 0.02
    assert abs(data.labels[ap].mean() - data.labels[~ap].mean()) < 0.05
    # a view-only classifier ("AP means pneumonia") is at chance
    tpr = np.mean(ap[data.labels == 1])
    tnr = np.mean(~ap[data.labels == 0])
    assert abs((tpr + tnr) / 2 - 0.5) < 0.03


@needs_tables
def test_splits_hold_disjoint_patients(rsna_splits, vindr_splits):
    ids = {s: set(d.patient_ids) for s, d in rsna_splits.items()}
    assert not (ids["pool"] & ids["val"]) and not (ids["pool"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert not set(vindr_splits["pool"].patient_ids) & set(vindr_splits["test"].patient_ids)


@needs_tables
def test_items_are_consistent(rsna_splits):
    data = rsna_splits["test"]
    assert data.images.dtype == np.float32 and data.images.shape == (2000, 32, 32)
    assert data.images.min() >= 0 and data.images.max() <= 1
    has_roi = data.roi.any((1, 2))
    assert np.array_equal(has_roi, data.labels == 1)  # every positive has a box, no negative has one
    assert data.anatomy.any((1, 2)).all()
    table = cxr_tables.load_rsna()
    index = {p: i for i, p in enumerate(table.patient_ids)}
    rows = np.array([index[p] for p in data.patient_ids])
    assert np.array_equal(data.labels, table.label[rows]) and np.array_equal(data.view, table.view[rows])
    assert all(len(b) == np.diff(table.box_start)[r] for b, r in zip(data.boxes, rows, strict=True))


@needs_tables
def test_roi_is_the_boxes_by_the_pixel_centre_rule_and_mostly_inside_the_lungs(rsna_splits):
    data = rsna_splits["pool"]
    centre = np.arange(32) + 0.5
    for i in np.flatnonzero(data.labels == 1)[:200]:
        expected = np.zeros((32, 32), dtype=bool)
        for x0, y0, x1, y1 in data.boxes[i]:
            expected |= ((centre >= y0) & (centre < y1))[:, None] & ((centre >= x0) & (centre < x1))[None, :]
        assert np.array_equal(expected, data.roi[i]), i
        inside = (data.roi[i] & data.anatomy[i]).sum() / data.roi[i].sum()
        assert data.roi_in_lung[i] == pytest.approx(inside)
    assert np.isnan(data.roi_in_lung[data.labels == 0]).all()
    positive = data.roi_in_lung[data.labels == 1]
    assert np.mean(positive) > 0.85 and np.mean(positive > 0.5) > 0.95  # the stated fractions


@needs_tables
def test_the_ap_marker_is_outside_the_lungs_and_the_roi(rsna_splits):
    data = rsna_splits["pool"]
    on = data.marker.any((1, 2))
    ap = data.view == 1
    assert not on[~ap].any() and 0.85 < on[ap].mean() < 0.95
    assert not (data.marker & data.anatomy).any() and not (data.marker & data.roi).any()
    assert (data.images[data.marker] > 0.85).all()


@needs_tables
def test_ap_films_look_different_as_a_whole(rsna_splits):
    """A model can cheat on the look: AP images have less contrast (a lower spread of intensities)."""
    data = rsna_splits["test"]
    spread = data.images.std((1, 2))
    ap = data.view == 1
    assert spread[ap].mean() < 0.85 * spread[~ap].mean()


@needs_tables
def test_deterministic_and_prefix_stable():
    a = rsna_sim("val", 300, seed=7)
    b = rsna_sim("val", 300, seed=7)
    longer = rsna_sim("val", 700, seed=7)
    other = rsna_sim("val", 300, seed=8)
    assert a.images.shape == (300, 64, 64)
    for name in ("images", "labels", "roi", "anatomy", "marker", "view"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(getattr(a, name), getattr(longer, name)[:300]), name
    assert a.patient_ids == b.patient_ids == longer.patient_ids[:300]
    assert not np.array_equal(a.images, other.images)


@needs_tables
def test_heldout_prevalence_is_a_knob():
    data = rsna_sim("test", 600, size=32, seed=1, heldout_prevalence=0.5)
    ap = data.view == 1
    assert abs(data.labels.mean() - 0.5) < 0.02 and abs(data.labels[ap].mean() - data.labels[~ap].mean()) < 0.05


@needs_tables
def test_the_density_floor_lifts_the_faintest_findings_and_nothing_else():
    """Each finding's density is ``opacity × U[floor, 0.30]``: the finding an image receives is its
    difference from the same drawing at a vanishing opacity (every random draw is the same)."""
    def findings(**options):
        kept = rsna_sim("pool", 256, size=32, seed=2, **options)
        bare = rsna_sim("pool", 256, size=32, seed=2, **{**options, "opacity": 1e-6})
        positive = kept.labels == 1
        return kept, (kept.images - bare.images)[positive].reshape(int(positive.sum()), -1).max(1)

    default, faint = findings(opacity=0.4)
    floored, lifted = findings(opacity=0.4, density_floor=0.25)
    assert np.array_equal(default.labels, floored.labels) and np.array_equal(default.roi, floored.roi)
    assert np.array_equal(default.images[default.labels == 0], floored.images[floored.labels == 0])
    assert (lifted >= faint - 1e-6).all() and np.percentile(lifted, 10) > 1.3 * np.percentile(faint, 10)
    assert floored.info["density_range"] == [0.25, 0.30] and default.info["density_range"] == [0.10, 0.30]


@needs_tables
def test_size_compensation_makes_small_findings_denser_and_leaves_the_rest_alone():
    """``γ = 1`` scales a finding smaller than the reference area by ``√(reference / area)`` (at most
    4×): its peak rises by that factor over the uncompensated drawing (same random draws); findings
    at or above the reference area, and every negative image, are unchanged bit for bit."""
    from xal_core.data.cxr_sim import MAX_COMPENSATION, REFERENCE_AREA

    def drawn(**options):
        kept = rsna_sim("pool", 256, size=32, seed=2, opacity=0.4, **options)
        bare = rsna_sim("pool", 256, size=32, seed=2, **{**options, "opacity": 1e-6})
        return kept, (kept.images - bare.images).reshape(len(kept.images), -1).max(1)

    plain, plain_peak = drawn()
    compensated, peak = drawn(size_compensation=1.0)
    positive = plain.labels == 1
    area = plain.roi.sum((1, 2)) / (32 * 32)
    expected = np.clip(np.sqrt(REFERENCE_AREA / np.maximum(area, 1 / 1024)), 1.0, MAX_COMPENSATION)
    small = positive & (expected > 1.2) & (plain_peak > 0.02)  # a peak the clip to [0, 1] leaves alone
    large = positive & (area >= REFERENCE_AREA)
    assert small.sum() > 10 and large.sum() > 10
    assert np.array_equal(plain.images[~positive], compensated.images[~positive])
    assert np.array_equal(plain.images[large], compensated.images[large])
    ratio = peak[small] / plain_peak[small]
    assert np.median(np.abs(ratio / expected[small] - 1)) < 0.05  # blur and the clip move a few peaks
    assert compensated.info["size_compensation"] == 1.0 and plain.info["size_compensation"] == 0.0


@needs_tables
def test_mimics_are_small_lung_densities_in_both_classes_that_move_no_label_or_roi():
    """Finding mimics go into negatives as often as positives, inside the lungs, as small blobs;
    labels, ROIs and anatomy are the drawing's own (the mimics are not findings)."""
    from xal_core.data.cxr_sim import MIMIC_RADIUS, _Chest, tables

    plain = rsna_sim("pool", 256, size=64, seed=2, opacity=0.7)
    mimicked = rsna_sim("pool", 256, size=64, seed=2, opacity=0.7, mimics=2.0)
    for field_ in ("labels", "roi", "anatomy", "view"):
        assert np.array_equal(getattr(plain, field_), getattr(mimicked, field_))
    assert mimicked.info["mimics"] == 2.0 and plain.info["mimics"] == 0.0

    chest = _Chest(np.random.default_rng(0), tables.load_lung_shapes(128), np.zeros(400, dtype=bool), (64, 64))
    layer = chest.mimics(2.0, (0.1, 0.2))
    drawn = layer > 0.05
    assert not (drawn & ~chest.anatomy).sum() > 0.1 * drawn.sum()  # centred in the lungs (edges may spill)
    per_image = drawn.sum((1, 2))
    largest = np.pi * (MIMIC_RADIUS[1] * 64 + 1) ** 2
    assert 0.75 < (per_image > 0).mean() < 0.95  # P(Poisson(2) > 0) = 0.86
    assert per_image.max() <= 4 * largest and layer.max() <= 0.2 + 1e-6


@pytest.mark.parametrize("bad", [dict(split="train"), dict(size=16), dict(heldout_ap=1.5), dict(ap_marker=-0.1),
                                 dict(n=-1), dict(density_floor=0.31), dict(density_floor=-0.1),
                                 dict(size_compensation=-0.5), dict(size_compensation=1.5), dict(mimics=-1),
                                 dict(mimics=5)])
def test_bad_rsna_arguments(bad):
    with pytest.raises(ValueError):
        rsna_sim(**{"n": 2, **bad})


# ----------------------------------------------------------------------------------------- VinDr


@needs_tables
def test_vindr_classes_and_balanced_test(vindr_splits):
    test, pool = vindr_splits["test"], vindr_splits["pool"]
    assert test.classes == ("No finding", *DEFAULT_FINDINGS)
    counts = np.bincount(test.labels, minlength=len(test.classes))
    assert (np.abs(counts / len(test) - 1 / len(test.classes)) < 0.02).all()
    assert np.mean(pool.labels == 0) > 0.6  # the pool keeps the table's mix: mostly normal
    negative = test.labels == 0
    assert not test.roi[negative].any() and not test.consensus[negative].any() and not test.union[negative].any()
    assert test.roi[~negative].any((1, 2)).all() and test.consensus[~negative].any((1, 2)).all()


@needs_tables
def test_vindr_readers_disagree_and_consensus_lies_in_the_union(vindr_splits):
    data = vindr_splits["test"]
    positive = data.labels > 0
    assert not (data.consensus & ~data.union).any() and not (data.roi & ~data.union).any()
    several = positive & (data.n_readers >= 2)
    assert several.mean() > 0.5
    # one reader's boxes (the oracle's ROI) differ from the consensus for most multi-reader items
    differs = (data.roi[several] != data.consensus[several]).any((1, 2))
    assert differs.mean() > 0.5
    assert (data.union[several].sum((1, 2)) >= data.consensus[several].sum((1, 2))).all()


@needs_tables
def test_vindr_table_readers_really_disagree():
    t = cxr_tables.load_vindr()
    cardio = t.class_names.index("Cardiomegaly")
    image = np.repeat(np.arange(len(t)), np.diff(t.start))
    sel = np.flatnonzero(t.class_id == cardio)
    by_image: dict[int, list[np.ndarray]] = {}
    for j in sel:
        by_image.setdefault(int(image[j]), []).append(t.box[j])
    pairs = [(b[0], b[1]) for b in by_image.values() if len(b) >= 2]
    assert len(pairs) > 500
    assert np.mean([not np.allclose(a, b) for a, b in pairs]) > 0.9


def test_bad_vindr_arguments():
    with pytest.raises(ValueError, match="findings"):
        vindr_sim(n=2, findings=("Broken heart",))
    with pytest.raises(ValueError, match="heldout"):
        vindr_sim(n=2, heldout="uniform")


# ------------------------------------------------------------------------------------ as a dataset
@needs_tables
def test_the_dataset_adapter_serves_boxes_lungs_and_known_empty_rois(tmp_path):
    import torch

    from xal_core.data import PoolStore, PoolWriter, open_dataset

    data = open_dataset("cxr-sim", size=(32, 32), n=60, split="pool", seed=3)
    assert data.roi_format == "boxes" and data.classes == ("no pneumonia", "pneumonia")
    items = list(data)
    for item in items:
        assert item.image.shape == (1, 32, 32) and item.prior.dtype == torch.bool and item.prior.any()
        assert item.roi.shape[1] == 4 and (len(item.roi) > 0) == (item.label == 1)  # negatives: known-empty
        assert item.meta["view"] in ("AP", "PA")
    with PoolWriter(tmp_path / "pool", size=(32, 32), channels=1, classes=data.classes, roi_format=data.roi_format,
                    source=data.describe(), roi_source="anatomy") as writer:
        for item in items:
            writer.add(item)
    pool = PoolStore.open(tmp_path / "pool")
    chunk = next(pool.chunks())
    assert torch.equal(chunk.roi.to_masks(), torch.stack([item.prior for item in items]))
    assert [r.shape[0] for r in pool.oracle_rois(range(len(items)))] == [len(item.roi) for item in items]


@needs_tables
def test_the_vindr_variant_gives_one_readers_roi_in_the_pool_and_the_consensus_in_test():
    from xal_core.data import open_dataset

    pool = open_dataset("cxr-sim", size=(32, 32), n=200, split="pool", seed=3, variant="vindr")
    test = open_dataset("cxr-sim", size=(32, 32), n=200, split="test", seed=3, variant="vindr")
    assert pool.roi_format == "mask" and len(pool.classes) == 5
    assert all(bool((pool[i].roi.numpy() == pool.data.roi[i]).all()) for i in range(20))
    assert all(bool((test[i].roi.numpy() == test.data.consensus[i]).all()) for i in range(20))


@needs_tables
def test_the_density_floor_is_a_recorded_option_of_the_rsna_variant_only():
    from xal_core.data import open_dataset

    floored = open_dataset("cxr-sim", size=(32, 32), n=8, split="val", seed=3, opacity=0.3, density_floor="0.25")
    assert floored.describe()["options"]["density_floor"] == 0.25  # recorded: a data folder says how it was drawn
    assert "density_floor" not in open_dataset("cxr-sim", size=(32, 32), n=8, seed=3).describe()["options"]
    with pytest.raises(ValueError, match="density_floor: only the rsna variant"):
        open_dataset("cxr-sim", size=(32, 32), n=8, seed=3, variant="vindr", density_floor=0.25)
    compensated = open_dataset("cxr-sim", size=(32, 32), n=8, seed=3, size_compensation="1")
    assert compensated.describe()["options"]["size_compensation"] == 1.0
    with pytest.raises(ValueError, match="size_compensation: only the rsna variant"):
        open_dataset("cxr-sim", size=(32, 32), n=8, seed=3, variant="vindr", size_compensation=1.0)
