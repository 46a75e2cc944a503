"""Bad input: structural errors raise ``ValueError`` naming the argument (and the offending index);
NaN/Inf values poison only their own item, which is flagged, warned about and ranked last."""

from __future__ import annotations

import math
import re
import warnings

import contract_reference as ref
import numpy as np
import pytest
import torch
from conftest import (
    assert_alignment_matches,
    nondegenerate_features,
    over_fast_alignments,
    random_masks,
    reference_alignment,
)

from xal_core.scoring import (
    NonFiniteInputWarning,
    Roi,
    TopK,
    bald,
    dual_score,
    gradcam_maps,
    uncertainty,
)

FIELDS = ("dice", "soft_dice", "roi_energy", "pointing_hit")


def raises(match: str):
    return pytest.raises(ValueError, match=match)


# --------------------------------------------------------------------------- cam_alignment inputs
@pytest.fixture
def good(gen):
    features = torch.rand(3, 4, 5, 5, generator=gen) + 0.05
    weights = torch.randn(3, 4, generator=gen)
    roi = Roi.from_masks(torch.rand(3, 10, 10, generator=gen) > 0.5)
    return features, weights, roi


@over_fast_alignments
@pytest.mark.parametrize(
    "change,match",
    [
        (lambda f, w, r: (f[0], w, r), r"^features: .*\[B, C, h, w\]"),
        (lambda f, w, r: (f[..., None], w, r), r"^features: "),
        (lambda f, w, r: (f.numpy(), w, r), r"^features: .*torch\.Tensor"),
        (lambda f, w, r: (f.to(torch.int32), w, r), r"^features: dtype"),
        (lambda f, w, r: (f.to(torch.complex64), w, r), r"^features: dtype"),
        (lambda f, w, r: (f[:, :0], w[:, :0], r), r"^features: C, h and w"),
        (lambda f, w, r: (f, w[:, :3], r), r"^weights: expected shape \[3, 4\]"),
        (lambda f, w, r: (f, w[:2], r), r"^weights: expected shape \[3, 4\]"),
        (lambda f, w, r: (f, w[:, :, None], r), r"^weights: "),
        (lambda f, w, r: (f, w.to(torch.int64), r), r"^weights: dtype"),
        (lambda f, w, r: (f, w.tolist(), r), r"^weights: .*torch\.Tensor"),
        (lambda f, w, r: (f, w, r[0:2]), r"^roi: holds 2 items, features hold 3"),
        (lambda f, w, r: (f, w, r.to_masks()), r"^roi: expected an xal_core\.scoring\.Roi"),
    ],
    ids=[
        "features-rank3", "features-rank5", "features-numpy", "features-int", "features-complex", "features-C0",
        "weights-C", "weights-B", "weights-rank3", "weights-int", "weights-list", "roi-batch", "roi-tensor",
    ],
)
def test_cam_alignment_structural_errors(fast_alignment, good, change, match):
    features, weights, roi = change(*good)
    with raises(match):
        fast_alignment(features, weights, roi)


@over_fast_alignments
@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.0000001, 2, float("nan"), float("inf"), "0.5", None])
def test_threshold_outside_unit_interval_raises(fast_alignment, good, threshold):
    with raises(r"^threshold: expected a number in \(0, 1\]"):
        fast_alignment(*good, threshold=threshold)


@over_fast_alignments
def test_threshold_one_and_tiny_are_valid(fast_alignment, good):
    for threshold in (1.0, 1, 1e-12):
        fast_alignment(*good, threshold=threshold)


def test_gradcam_maps_structural_errors(good):
    features, weights, _ = good
    with raises(r"^size: "):
        gradcam_maps(features, weights, (0, 4))
    with raises(r"^size: "):
        gradcam_maps(features, weights, (4.5, 4))
    with raises(r"^weights: "):
        gradcam_maps(features, weights[:1], (4, 4))


# --------------------------------------------------------------------------- ROI construction
def test_mask_errors():
    with raises(r"^masks: expected dtype bool"):
        Roi.from_masks(torch.zeros(2, 4, 4))
    with raises(r"^masks: expected shape \[B, H, W\]"):
        Roi.from_masks(torch.zeros(4, 4, dtype=torch.bool))
    with raises(r"^masks: expected a torch\.Tensor"):
        Roi.from_masks(np.zeros((2, 4, 4), dtype=bool))
    bad = torch.zeros(3, 4, 4, dtype=torch.uint8)
    bad[2, 1, 1] = 2
    with raises(r"^masks\[2\]: integer mask holds values other than 0 and 1"):
        Roi.from_masks(bad)
    with raises(r"^masks: the ROI frame must be at least 1×1"):
        Roi.from_masks(torch.zeros(2, 0, 4, dtype=torch.bool))
    with raises(r"^known: expected shape \[2\]"):
        Roi.from_masks(torch.zeros(2, 4, 4, dtype=torch.bool), known=[True, False, True])


def test_integer_01_masks_are_accepted():
    masks = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.int64)
    assert torch.equal(Roi.from_masks(masks).to_masks(), masks.bool())


def test_packed_mask_errors():
    with raises(r"^packed: expected uint8"):
        Roi.from_packed_masks(torch.zeros(2, 4, 1, dtype=torch.int32), 8)
    with raises(r"^packed: expected uint8"):
        Roi.from_packed_masks(torch.zeros(4, 1, dtype=torch.uint8), 8)
    with raises(r"^packed: last dim 1 does not hold width 9 \(needs 2\)"):
        Roi.from_packed_masks(torch.zeros(2, 4, 1, dtype=torch.uint8), 9)
    with raises(r"^packed: last dim 2 does not hold width 8"):
        Roi.from_packed_masks(torch.zeros(2, 4, 2, dtype=torch.uint8), 8)


@pytest.mark.parametrize(
    "box,problem",
    [
        ([5.0, 1.0, 4.0, 3.0], "x_max < x_min"),
        ([1.0, 5.0, 4.0, 3.0], "y_max < y_min"),
        ([12.0, 1.0, 15.0, 3.0], "entirely outside"),  # right of the frame
        ([-5.0, 1.0, 0.0, 3.0], "entirely outside"),  # left: x_max = 0 touches the border only
        ([1.0, -4.0, 3.0, -1.0], "entirely outside"),  # above
        ([1.0, 8.0, 3.0, 9.0], "entirely outside"),  # below: y_min = H
        ([float("nan"), 1.0, 3.0, 3.0], "finite"),
        ([1.0, 1.0, float("inf"), 3.0], "finite"),
    ],
)
def test_bad_boxes_name_the_item_and_the_box(box, problem):
    boxes = [torch.tensor([[1.0, 1.0, 3.0, 3.0]]), None, torch.tensor([[0.0, 0.0, 2.0, 2.0], box])]
    with raises(rf"^boxes\[2\]\[1\]: .*{re.escape(problem)}"):
        Roi.from_boxes(boxes, size=(8, 10))


def test_box_structure_errors():
    with raises(r"^boxes\[1\]: expected shape \[M, 4\]"):
        Roi.from_boxes([torch.zeros(0, 4), torch.zeros(2, 3)], size=(4, 4))
    with raises(r"^boxes\[0\]: expected a tensor \[M, 4\] or None"):
        Roi.from_boxes([[0.0, 0.0, 1.0, 1.0]], size=(4, 4))
    with raises(r"^boxes: expected a list"):
        Roi.from_boxes(torch.zeros(2, 1, 4), size=(4, 4))
    for size in ((0, 4), (4,), (2.5, 4), (4, -1)):
        with raises(r"^size: "):
            Roi.from_boxes([None], size=size)


def test_padded_boxes_errors():
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]] * 3)
    with raises(r"^counts\[1\]: 3 is not -1"):
        Roi.from_padded_boxes(boxes, torch.tensor([1, 3, 0]), size=(4, 4))
    with raises(r"^counts\[0\]: -2 is not -1"):
        Roi.from_padded_boxes(boxes, torch.tensor([-2, 1, 0]), size=(4, 4))
    with raises(r"^counts: "):
        Roi.from_padded_boxes(boxes, torch.tensor([1, 1]), size=(4, 4))
    with raises(r"^boxes: expected \[B, M, 4\]"):
        Roi.from_padded_boxes(boxes[..., :3], torch.tensor([1, 1, 1]), size=(4, 4))
    bad = boxes.clone()
    bad[2, 1] = torch.tensor([3.0, 0.0, 1.0, 2.0])
    with raises(r"^boxes\[2\]\[1\]: x_max < x_min"):
        Roi.from_padded_boxes(bad, torch.tensor([1, 1, 2]), size=(4, 4))
    # Padding rows past counts are never looked at.
    Roi.from_padded_boxes(bad, torch.tensor([1, 1, 1]), size=(4, 4))


@over_fast_alignments
def test_boxes_partly_outside_are_clipped_and_match_reference(fast_alignment, gen):
    frame = (20, 24)
    boxes = [
        torch.tensor([[-10.0, -3.5, 6.2, 9.0]]),
        torch.tensor([[15.5, 12.0, 40.0, 35.0], [-1.0, 18.7, 3.0, 22.0]]),
        torch.tensor([[-100.0, -100.0, 100.0, 100.0]]),
    ]
    features, weights = nondegenerate_features(gen, 3, 6, 5, 6, frame)
    roi = Roi.from_boxes(boxes, size=frame)
    truth = np.stack([ref.rasterise_boxes(b.tolist(), *frame) for b in boxes])
    np.testing.assert_array_equal(roi.to_masks().numpy(), truth)
    assert truth[2].all()
    assert_alignment_matches(fast_alignment(features, weights, roi), reference_alignment(features, weights, truth), context="clipped boxes")


# --------------------------------------------------------------------------- uncertainty / fusion inputs
def test_dual_score_structural_errors():
    u, m = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    with raises(r"^misalignment: holds 3 items, uncertainty holds 4"):
        dual_score(u, m[:3])
    with raises(r"^uncertainty: expected shape \[B\]"):
        dual_score(u[None], m)
    with raises(r"^misalignment: expected a floating dtype"):
        dual_score(u, torch.ones(4, dtype=torch.int64))
    with raises(r"^uncertainty: expected a torch\.Tensor"):
        dual_score(u.tolist(), m)
    with raises(r"^invalid: expected shape \(4,\)"):
        dual_score(u, m, invalid=torch.zeros(5, dtype=torch.bool))


# --------------------------------------------------------------------------- NaN / Inf in one item
def _poisoned_batch(gen, batch=5, frame=(18, 21)):
    features, weights = nondegenerate_features(gen, batch, 8, 6, 7, frame)
    masks = random_masks(gen, batch, *frame)
    return features, weights, masks


def _drop(t: torch.Tensor, index: int) -> torch.Tensor:
    return torch.cat([t[:index], t[index + 1 :]])


@over_fast_alignments
@pytest.mark.parametrize(
    "where,value",
    [("features", float("nan")), ("features", float("inf")), ("weights", float("nan")), ("weights", float("-inf"))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nonfinite_item_is_isolated(fast_alignment, where, value, dtype, gen):
    features, weights, masks = _poisoned_batch(gen)
    features, weights = features.to(dtype), weights.to(dtype)
    bad = 2
    if where == "features":
        features[bad, 3, 1, 4] = value
    else:
        weights[bad, 5] = value
    roi = Roi.from_masks(masks)
    with pytest.warns(NonFiniteInputWarning, match=r"\b1 item"):
        scores = fast_alignment(features, weights, roi)
    assert scores.invalid.tolist() == [i == bad for i in range(5)] and scores.n_invalid == 1
    for field in FIELDS:
        values = getattr(scores, field)
        assert torch.isnan(values[bad]), f"{field} of the poisoned item = {float(values[bad])}"
    # The other items: what the batch without the poisoned item gives. Batched matrix products may
    # round differently when the batch changes size, so "the same" means to float32 rounding.
    clean = fast_alignment(_drop(features, bad), _drop(weights, bad), Roi.from_masks(_drop(masks, bad)))
    for field in FIELDS:
        got, want = _drop(getattr(scores, field), bad), getattr(clean, field)
        assert torch.allclose(got, want, rtol=0, atol=1e-6), f"{field}: other items changed: {got.tolist()} vs {want.tolist()}"
    assert not clean.invalid.any()
    assert_alignment_matches(clean, reference_alignment(_drop(features, bad), _drop(weights, bad), _drop(masks, bad)))

    # dual_score ranks it last; TopK puts it after every finite score.
    u = torch.rand(5, generator=gen, dtype=torch.float64)
    with pytest.warns(NonFiniteInputWarning):
        fused = dual_score(u, scores)
    assert fused.score[bad] == float("-inf") and bool(fused.invalid[bad])
    assert torch.isfinite(_drop(fused.score, bad)).all()
    top = TopK(5)
    top.push(torch.arange(5), fused.score)
    assert top.result().ids.tolist()[-1] == bad


@over_fast_alignments
def test_several_nonfinite_items_warning_counts_them(fast_alignment, gen):
    features, weights, masks = _poisoned_batch(gen, batch=6)
    features[0, 0, 0, 0] = float("nan")
    features[3, 7, 5, 6] = float("inf")
    weights[4, 0] = float("nan")
    with pytest.warns(NonFiniteInputWarning, match=r"\b3 item") as record:
        scores = fast_alignment(features, weights, Roi.from_masks(masks))
    assert len([w for w in record if issubclass(w.category, NonFiniteInputWarning)]) == 1, "one warning per call"
    assert scores.invalid.tolist() == [True, False, False, True, True, False]
    assert torch.isnan(scores.dice[[0, 3, 4]]).all() and not torch.isnan(scores.dice[[1, 2, 5]]).any()


@over_fast_alignments
def test_nonfinite_item_with_box_rois_and_unknown_rois(fast_alignment, gen):
    features, weights, _ = _poisoned_batch(gen, batch=3, frame=(12, 12))
    features[1, 2, 2, 2] = float("nan")
    roi = Roi.from_boxes([torch.tensor([[1.0, 1.0, 8.0, 9.5]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), None], size=(12, 12))
    with pytest.warns(NonFiniteInputWarning, match=r"\b1 item"):
        scores = fast_alignment(features, weights, roi)
    assert scores.invalid.tolist() == [False, True, False]  # an unknown ROI is not invalid
    assert torch.isnan(scores.dice[1:]).all() and not torch.isnan(scores.dice[0])


def test_gradcam_maps_nonfinite_item(gen):
    features, weights, _ = _poisoned_batch(gen, batch=3)
    clean = gradcam_maps(features, weights, (9, 10))
    features[1, 0, 0, 0] = float("nan")
    with pytest.warns(NonFiniteInputWarning, match=r"\b1 item"):
        maps = gradcam_maps(features, weights, (9, 10))
    assert torch.isnan(maps[1]).all()
    assert torch.equal(maps[[0, 2]], clean[[0, 2]])


@over_fast_alignments
def test_no_warning_for_finite_inputs(fast_alignment, gen):
    features, weights, masks = _poisoned_batch(gen, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast_alignment(features, weights, Roi.from_masks(masks))
        gradcam_maps(features, weights, (5, 5))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("kind", ["entropy", "margin", "least_confidence"])
def test_nonfinite_logits_are_isolated(value, kind, gen):
    logits = torch.randn(6, 4, generator=gen)
    clean = uncertainty(logits, kind)
    logits[4, 1] = value
    with pytest.warns(NonFiniteInputWarning, match=r"\b1 item"):
        got = uncertainty(logits, kind)
    assert torch.isnan(got[4])
    assert torch.equal(_drop(got, 4), _drop(clean, 4))
    with pytest.warns(NonFiniteInputWarning):
        fused = dual_score(got, torch.rand(6, generator=gen, dtype=torch.float64))
    assert fused.score[4] == float("-inf") and fused.invalid.tolist() == [i == 4 for i in range(6)]
    top = TopK(3)
    top.push(torch.arange(6), fused.score)
    assert 4 not in top.result().ids.tolist()
    top_all = TopK(6)
    top_all.push(torch.arange(6), fused.score)
    assert top_all.result().ids.tolist()[-1] == 4


def test_nonfinite_mc_logits_are_isolated(gen):
    logits = torch.randn(5, 4, 3, generator=gen)
    clean = bald(logits)
    logits[3, 2, 0] = float("nan")  # one pass of item 2
    with pytest.warns(NonFiniteInputWarning, match=r"\b1 item"):
        got = bald(logits)
    assert torch.isnan(got[2]) and not torch.isnan(_drop(got, 2)).any()
    assert torch.equal(_drop(got, 2), _drop(clean, 2))
    assert math.isnan(float(got[2]))


@over_fast_alignments
def test_finite_inputs_whose_channel_sum_overflows_float32(fast_alignment):
    """The contract's map is well defined for these finite inputs (the dense float64 path gets it);
    the fast path must either score them correctly or flag them invalid, never return silent NaN/0."""
    features = torch.tensor([[[[3e38, 1e38, 0.0]]], [[[1.0, 2.0, 3.0]]]], dtype=torch.float32)
    weights = torch.tensor([[2.0], [1.0]], dtype=torch.float32)
    masks = torch.tensor([[[True, False, False]]] * 2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scores = fast_alignment(features, weights, Roi.from_masks(masks))
    if bool(scores.invalid[0]):  # flagged: acceptable, as long as it is NaN and warned about
        assert torch.isnan(scores.dice[0]) and any(issubclass(w.category, NonFiniteInputWarning) for w in record)
    else:
        assert_alignment_matches(scores, reference_alignment(features, weights, masks), context="float32 overflow")
