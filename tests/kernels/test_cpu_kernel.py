"""The compiled CPU kernel (``xal_kernels.cpu_alignment``) beyond the shared contract tests.

The contract itself (odd sizes, dtypes, thresholds, ties, constant maps, boxes, NaN items) is
checked for this kernel by the same tests as the separable path (``conftest.over_fast_alignments``
and ``PATHS`` in tests/test_alignment_contract.py). Here: what is particular to it — the exact
threshold cut it compares raw values with, splitting a batch over threads, and its first call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_alignment_matches, nondegenerate_features, random_masks, reference_alignment

from xal_core.scoring import Roi
from xal_core.scoring.alignment import cam_alignment_reference

pytest.importorskip("numba")  # a base dependency; only hosts running from carried wheels lack it
from xal_kernels import cpu_alignment  # noqa: E402

FIELDS = ("dice", "soft_dice", "roi_energy", "pointing_hit")


def test_raw_cut_is_the_first_float_whose_normalised_value_reaches_tau(rng):
    """``v >= cut`` must decide exactly as ``(v - low) / span >= tau`` for every float64 ``v``:
    ``cut`` qualifies and the float just below it does not."""
    raw_cut = cpu_alignment._raw_cut
    cases = [(0.0, 1.0, 0.5), (0.0, 3.0, 1.0), (2.0, 2.0 + 1e-9, 0.5), (1e3, 1e3 + 1e-3, 0.25), (0.0, 1e-300, 0.7)]
    for _ in range(200):
        low = float(rng.uniform(0, 10)) * float(rng.choice([1e-6, 1.0, 1e6]))
        high = low + float(rng.uniform(1e-12, 1.0)) * max(low, 1.0)
        cases.append((low, high, float(rng.uniform(1e-9, 1.0))))
    for low, high, tau in cases:
        span = high - low
        cut = raw_cut(low, high, span, tau)
        assert low < cut <= high, (low, high, tau, cut)
        assert (cut - low) / span >= tau, (low, high, tau, cut)
        below = np.nextafter(cut, -np.inf)
        assert (below - low) / span < tau, (low, high, tau, cut)


def test_threads_split_the_batch_without_changing_a_bit(gen):
    features, weights = nondegenerate_features(gen, 37, 16, 7, 7, (61, 57))
    masks = random_masks(gen, 37, 61, 57)
    roi = Roi.from_masks(masks, known=[b % 9 != 4 for b in range(37)])
    one = cpu_alignment.cam_alignment(features, weights, roi, threads=1)
    for threads in (2, 3, 8):
        many = cpu_alignment.cam_alignment(features, weights, roi, threads=threads)
        for name in FIELDS:
            assert torch.equal(getattr(one, name).isnan(), getattr(many, name).isnan()), (threads, name)
            assert torch.equal(getattr(one, name).nan_to_num(-1), getattr(many, name).nan_to_num(-1)), (threads, name)


def test_service_batch_shape_matches_the_float64_reference(gen):
    """The service benchmark's inline batch (512×7×7 features, 224² masks) on fresh random inputs."""
    features, weights = nondegenerate_features(gen, 12, 512, 7, 7, (224, 224), dtype=torch.float64)
    masks = random_masks(gen, 12, 224, 224)
    refs = reference_alignment(features, weights, masks)
    assert_alignment_matches(cpu_alignment.cam_alignment(features, weights, Roi.from_masks(masks)), refs, context="compiled 224²")


def test_boxes_are_drawn_a_row_at_a_time_like_their_mask(gen):
    """Overlapping boxes, one reaching past the frame, one empty after clipping: the same scores as
    the union mask, and as the dense reference."""
    features, weights = nondegenerate_features(gen, 3, 8, 5, 6, (40, 33))
    boxes = [
        torch.tensor([[2.0, 3.0, 20.0, 25.0], [10.0, 10.0, 40.0, 50.0]]),
        torch.tensor([[0.2, 0.2, 0.4, 39.0]]),  # narrower than a pixel centre: empty
        torch.tensor([[5.5, 0.0, 6.5, 40.0], [0.0, 7.5, 33.0, 8.5], [5.5, 0.0, 6.5, 40.0]]),
    ]
    by_boxes = Roi.from_boxes(boxes, size=(40, 33))
    by_mask = Roi.from_masks(by_boxes.to_masks())
    got = cpu_alignment.cam_alignment(features, weights, by_boxes)
    want = cpu_alignment.cam_alignment(features, weights, by_mask)
    ref = cam_alignment_reference(features, weights, by_boxes)
    for name in FIELDS:
        assert torch.equal(getattr(got, name), getattr(want, name)), name
        assert torch.allclose(getattr(got, name), getattr(ref, name), atol=1e-6), name


def test_rejects_tensors_off_the_cpu():
    features = torch.rand(1, 2, 3, 3, device="meta")
    with pytest.raises(ValueError, match="CPU tensors, got meta|features"):
        cpu_alignment.cam_alignment(features, torch.rand(1, 2, device="meta"), Roi.from_masks(torch.ones(1, 4, 4, dtype=torch.bool)))


def test_warm_up_compiles_once_and_later_calls_agree():
    cpu_alignment.warm_up()
    features = torch.tensor([[[[0.0, 1.0], [2.0, 0.5]]]])
    roi = Roi.from_masks(torch.tensor([[[False, False, False], [False, True, True], [False, True, True]]]))
    got = cpu_alignment.cam_alignment(features, torch.ones(1, 1), roi)
    ref = cam_alignment_reference(features, torch.ones(1, 1), roi)
    for name in FIELDS:
        assert torch.allclose(getattr(got, name), getattr(ref, name), atol=1e-7), name
