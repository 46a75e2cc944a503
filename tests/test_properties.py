"""Property tests (hypothesis) of the scoring core."""

from __future__ import annotations

import math

import contract_reference as ref
import numpy as np
import torch
from conftest import as_f64, assert_alignment_matches, over_fast_alignments, reference_alignment
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xal_core.scoring import Roi, TopK, cam_alignment, percentile_ranks
from xal_core.scoring.reference import cam_alignment_dense

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

thresholds = st.one_of(st.sampled_from([0.5, 1.0, 0.3, 0.9]), st.floats(min_value=1e-6, max_value=1.0))


@st.composite
def cam_inputs(draw, max_grid=8, max_frame=24, weights_kind=None):
    """Small random CAM inputs drawn from a seed (tensors are made by torch, reproducibly)."""
    seed = draw(st.integers(0, 2**31 - 1))
    channels = draw(st.sampled_from([1, 2, 5, 16]))
    h, w = draw(st.integers(1, max_grid)), draw(st.integers(1, max_grid))
    height, width = draw(st.integers(1, max_frame)), draw(st.integers(1, max_frame))
    batch = draw(st.integers(1, 4))
    kind = weights_kind or draw(st.sampled_from(["mixed", "positive"]))
    fill = draw(st.floats(0.0, 1.0))
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, channels, h, w, generator=gen) + 0.05
    weights = torch.randn(batch, channels, generator=gen) if kind == "mixed" else torch.rand(batch, channels, generator=gen) + 0.05
    masks = torch.rand(batch, height, width, generator=gen) < fill
    return features, weights, masks


@over_fast_alignments
@SETTINGS
@given(inputs=cam_inputs(), threshold=thresholds)
def test_metrics_lie_in_unit_interval(fast_alignment, inputs, threshold):
    features, weights, masks = inputs
    roi = Roi.from_masks(masks)
    for name, scores in (
        ("fast", fast_alignment(features, weights, roi, threshold=threshold)),
        ("dense", cam_alignment_dense(features, weights, roi, threshold=threshold)),
    ):
        for field in ("dice", "soft_dice", "roi_energy"):
            values = getattr(scores, field)
            assert torch.all((values >= 0) & (values <= 1)), f"{name} {field} outside [0, 1]: {values.tolist()}"
        assert set(scores.pointing_hit.tolist()) <= {0.0, 1.0}, f"{name} hit: {scores.pointing_hit.tolist()}"
        assert not scores.invalid.any()


@over_fast_alignments
@SETTINGS
@given(
    a=cam_inputs(max_grid=6, max_frame=20, weights_kind="positive"),
    seed=st.integers(0, 2**31 - 1),
    threshold=st.sampled_from([0.3, 0.5, 0.7]),
)
def test_dice_is_symmetric(fast_alignment, a, seed, threshold):
    """Dice(P_A, G = P_B) == Dice(P_B, G = P_A): score map A against map B's binarisation as a mask
    ROI, and the other way round (maps without pixels near τ, so both binarisations are sharp)."""
    features_a, weights_a, masks = a
    height, width = masks.shape[1:]
    gen = torch.Generator().manual_seed(seed)
    features_b = torch.rand(features_a.shape, generator=gen) + 0.05
    weights_b = torch.rand(weights_a.shape, generator=gen) + 0.05
    binarised = []
    for features, weights in ((features_a, weights_a), (features_b, weights_b)):
        maps = []
        for b in range(features.shape[0]):
            r = ref.alignment(as_f64(features[b]), as_f64(weights[b]), np.zeros((height, width), bool), threshold)
            assume(r.near_in + r.near_out == 0)
            maps.append(np.array(r.map) >= threshold)
        binarised.append(torch.from_numpy(np.stack(maps)))
    a_vs_b = fast_alignment(features_a, weights_a, Roi.from_masks(binarised[1]), threshold=threshold)
    b_vs_a = fast_alignment(features_b, weights_b, Roi.from_masks(binarised[0]), threshold=threshold)
    assert torch.allclose(a_vs_b.dice, b_vs_a.dice, atol=1e-6, rtol=0), f"{a_vs_b.dice.tolist()} vs {b_vs_a.dice.tolist()}"
    # And both equal the Dice of the two reference binarisations.
    p, g = binarised
    inter = (p & g).flatten(1).sum(1).double()
    sizes = p.flatten(1).sum(1).double() + g.flatten(1).sum(1).double()
    want = torch.where(sizes == 0, 1.0, 2 * inter / sizes.clamp_min(1))
    assert torch.allclose(a_vs_b.dice.double(), want, atol=1e-6, rtol=0)


@SETTINGS
@given(inputs=cam_inputs(), exponent=st.integers(-20, 20), threshold=thresholds)
def test_power_of_two_weight_scaling_changes_nothing(inputs, exponent, threshold):
    """Scaling the CAM weights α by 2^k is exact in floating point, and the contract's map is
    invariant to a positive scale (ReLU is positively homogeneous; min-max removes the scale), so
    every score must be bit-identical."""
    features, weights, masks = inputs
    roi = Roi.from_masks(masks)
    for name, path in (("fast", cam_alignment), ("dense", cam_alignment_dense)):
        base = path(features, weights, roi, threshold=threshold)
        scaled = path(features, weights * 2.0**exponent, roi, threshold=threshold)
        for field in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
            assert torch.equal(getattr(base, field), getattr(scaled, field)), (
                f"{name} {field}: {getattr(base, field).tolist()} -> {getattr(scaled, field).tolist()} at scale 2^{exponent}"
            )


@over_fast_alignments
@SETTINGS
@given(inputs=cam_inputs(max_grid=6, max_frame=20, weights_kind="mixed"), factor=st.floats(1e-3, 1e3), threshold=thresholds)
def test_positive_weight_scaling_matches_unscaled_reference(fast_alignment, inputs, factor, threshold):
    """Any positive factor: the scores of the scaled weights still match the reference of the
    unscaled ones (near-threshold pixels and near-tied peaks aside), on both paths."""
    features, weights, masks = inputs
    features, weights = features.double(), weights.double()  # keep the scaling itself exact enough
    refs = reference_alignment(features, weights, masks, threshold=threshold)
    assume(not any(r.constant and not _constant_grid(features[b], weights[b]) for b, r in enumerate(refs)))
    roi = Roi.from_masks(masks)
    assert_alignment_matches(fast_alignment(features, weights * factor, roi, threshold=threshold), refs, context=f"fast ×{factor}")
    dense = cam_alignment_dense(features, weights * factor, roi, threshold=threshold)
    assert_alignment_matches(dense, refs, context=f"dense ×{factor}", exact_plateaus=False)  # see test_alignment_contract


def _constant_grid(features, weights) -> bool:
    values = [v for row in ref.cam_grid(as_f64(features), as_f64(weights)) for v in row]
    return max(values) == min(values)


# --------------------------------------------------------------------------- TopK
score_values = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, float("nan"), float("-inf"), float("inf")]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@SETTINGS
@given(
    scores=st.lists(score_values, min_size=0, max_size=120),
    k=st.integers(1, 40),
    data=st.data(),
)
def test_topk_chunked_equals_whole_sort(scores, k, data):
    n = len(scores)
    ids = data.draw(st.permutations(list(range(-n, 2 * n, 3))[:n]) if n else st.just([]))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=10))))
    bounds = [0, *cuts, n]
    top = TopK(k)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        top.push(torch.tensor(ids[lo:hi], dtype=torch.int64), torch.tensor(scores[lo:hi], dtype=torch.float64))
    pool = sorted(((s, i) for i, s in zip(ids, scores, strict=True) if not math.isnan(s)), key=lambda t: (-t[0], t[1]))[:k]
    got = top.result()
    assert got.ids.tolist() == [i for _, i in pool], f"cuts {cuts}"
    assert got.scores.tolist() == [s for s, _ in pool]
    assert top.n_seen == n and top.n_ineligible == sum(math.isnan(s) for s in scores)


# --------------------------------------------------------------------------- percentile ranks
@SETTINGS
@given(
    values=st.lists(st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6)), min_size=1, max_size=60),
    data=st.data(),
)
def test_percentile_ranks_order_matches_values(values, data):
    among = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    v = torch.tensor(values, dtype=torch.float64)
    chosen = torch.tensor(among, dtype=torch.bool)
    ranks = percentile_ranks(v, chosen)
    assert torch.isnan(ranks[~chosen]).all()
    idx = [i for i, c in enumerate(among) if c]
    r = ranks.tolist()
    for i in idx:
        assert 0.0 < r[i] < 1.0
        for j in idx:
            if values[i] < values[j]:
                assert r[i] < r[j], f"values {values[i]} < {values[j]} but ranks {r[i]} >= {r[j]}"
            elif values[i] == values[j]:
                assert r[i] == r[j], f"equal values {values[i]} with ranks {r[i]} != {r[j]}"
    if idx:
        assert math.isclose(sum(r[i] for i in idx) / len(idx), 0.5, abs_tol=1e-12), "mid-ranks average to 1/2"


def test_reference_peak_is_the_first_of_its_exact_copies():
    """Regression (found by hypothesis in a fresh-clone run): with a one-row grid every row of the
    map reads the grid identically, but the reference's float interpolation can lift a later row
    by one ulp; its pointing hit must still be the first row's, as in exact arithmetic (and as
    every xal path computes it)."""
    from tests.contract_reference import _first_peak_hit

    norm = [[0.0, 1.0 - 2**-53, 0.5], [0.0, 1.0, 0.5]]  # row 1 is row 0 plus one ulp at the peak
    roi = np.array([[0, 0, 0], [0, 1, 0]])
    copies = [(0, c) for _ in range(2) for c in range(3)]  # both rows read grid row 0
    assert _first_peak_hit(norm, roi, copies) == 0.0
    assert _first_peak_hit(norm, roi) == 1.0  # without the copies: whichever copy rounding lifted
