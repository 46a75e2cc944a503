"""Uncertainty measures, BALD and the dual score against the NumPy reference (docs/contract.md)."""

from __future__ import annotations

import math
import warnings

import contract_reference as ref
import numpy as np
import pytest
import torch
from conftest import assert_close_items

from xal_core.scoring import (
    UNCERTAINTY_KINDS,
    AlignmentScores,
    NonFiniteInputWarning,
    bald,
    dual_score,
    percentile_ranks,
    uncertainty,
)

REFERENCE_KIND = {"entropy": ref.entropy, "margin": ref.margin, "least_confidence": ref.least_confidence}


def random_logits(gen: torch.Generator, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Logits at a mix of scales per item (confident and unsure rows)."""
    scale = torch.tensor([0.05, 1.0, 4.0, 20.0])[torch.randint(0, 4, shape[:-1], generator=gen)][..., None]
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale.double()).to(dtype)


# --------------------------------------------------------------------------- uncertainty
def test_uncertainty_kinds_are_the_documented_three():
    assert set(UNCERTAINTY_KINDS) == {"entropy", "margin", "least_confidence"}


@pytest.mark.parametrize("kind", sorted(REFERENCE_KIND))
@pytest.mark.parametrize("classes", [2, 3, 10, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_uncertainty_matches_reference(kind, classes, dtype, gen):
    logits = random_logits(gen, (24, classes), dtype)
    got = uncertainty(logits, kind)
    assert got.shape == (24,) and got.dtype == torch.float32
    want = [REFERENCE_KIND[kind](row) for row in logits.double().tolist()]
    assert_close_items(got.double().tolist(), want, atol=1e-6, what=f"{kind}, K={classes}, {dtype}")
    assert bool(((got >= 0) & (got <= 1)).all()), f"{kind}: values outside [0, 1]: {got[(got < 0) | (got > 1)].tolist()}"


@pytest.mark.parametrize("kind", sorted(REFERENCE_KIND))
@pytest.mark.parametrize("classes", [2, 5, 1000])
def test_uncertainty_extremes(kind, classes):
    uniform = torch.zeros(1, classes)
    certain = torch.full((1, classes), -1e4)
    certain[0, classes // 2] = 1e4
    assert float(uncertainty(uniform, kind)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(uncertainty(certain, kind)[0]) == pytest.approx(0.0, abs=1e-6)


def test_uncertainty_default_kind_is_entropy(gen):
    logits = random_logits(gen, (9, 4))
    assert torch.equal(uncertainty(logits), uncertainty(logits, "entropy"))


def test_margin_two_classes_ties():
    logits = torch.tensor([[0.0, 0.0], [3.0, 3.0], [1.0, -1.0]])
    got = uncertainty(logits, "margin")
    p = 1 / (1 + math.exp(-2.0))
    assert_close_items(got.tolist(), [1.0, 1.0, 1.0 - (p - (1 - p))], atol=1e-6, what="margin")


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.zeros(4, 1), "K"),  # K = 1
        (torch.zeros(4), "logits"),  # wrong rank
        (torch.zeros(2, 4, 3), "logits"),
        (torch.zeros(4, 3, dtype=torch.int64), "dtype"),
        ([[0.0, 1.0]], "logits"),
    ],
    ids=["K=1", "rank1", "rank3", "int", "list"],
)
def test_uncertainty_rejects_bad_logits(bad, message):
    with pytest.raises(ValueError, match="logits") as info:
        uncertainty(bad)
    assert message in str(info.value)


def test_uncertainty_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        uncertainty(torch.zeros(2, 3), "variance")


# --------------------------------------------------------------------------- BALD
@pytest.mark.parametrize("passes", [1, 2, 8, 30])
@pytest.mark.parametrize("classes", [2, 7, 200])
def test_bald_matches_reference(passes, classes, gen):
    logits = random_logits(gen, (passes, 12, classes))
    got = bald(logits)
    assert got.shape == (12,) and got.dtype == torch.float32
    per_item = logits.double().transpose(0, 1).tolist()  # [B][T][K]
    want = [ref.bald(item) for item in per_item]
    assert_close_items(got.double().tolist(), want, atol=1e-6, what=f"BALD T={passes} K={classes}")
    assert bool(((got >= 0) & (got <= 1)).all())
    if passes == 1:
        assert torch.all(got.abs() <= 1e-6), "one pass carries no disagreement"


def test_bald_identical_passes_is_zero_and_full_disagreement_is_one():
    same = torch.randn(1, 3, 5).expand(6, 3, 5)
    assert torch.all(bald(same).abs() <= 1e-6)
    # Two confident passes on different classes of K = 2: I = log 2 - 0 -> 1 after scaling.
    split = torch.tensor([[[50.0, -50.0]], [[-50.0, 50.0]]])
    assert float(bald(split)[0]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(3, 4, 1), torch.zeros(4, 3), torch.zeros(2, 3, 4, 5), torch.zeros(3, 4, 2, dtype=torch.int32), torch.zeros(0, 4, 3)],
    ids=["K=1", "rank2", "rank4", "int", "T=0"],
)
def test_bald_rejects_bad_logits(bad):
    with pytest.raises(ValueError, match="logits_mc"):
        bald(bad)


# --------------------------------------------------------------------------- dual score: weighted
def _random_pair(gen, n):
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    m = torch.rand(n, generator=gen, dtype=torch.float64)
    return u, m


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_weighted_dual_score(weight, gen):
    u, m = _random_pair(gen, 50)
    out = dual_score(u, m, weight=weight)
    assert out.score.dtype == torch.float64
    want = ref.dual_score(u.tolist(), m.tolist(), weight=weight)
    assert_close_items(out.score.tolist(), want, atol=1e-12, what=f"weighted λ={weight}")
    assert not out.invalid.any() and not out.excluded.any()


def test_default_weight_is_one_half(gen):
    u, m = _random_pair(gen, 20)
    assert torch.equal(dual_score(u, m).score, dual_score(u, m, weight=0.5).score)
    assert_close_items(dual_score(u, m).score.tolist(), (0.5 * u + 0.5 * m).tolist(), atol=1e-12, what="λ = 0.5")


@pytest.mark.parametrize("method", ["weighted", "rank"])
@pytest.mark.parametrize("weight", [0.0, 0.25, 0.7])
def test_missing_roi_uncertainty_only(method, weight, gen):
    u, m = _random_pair(gen, 40)
    m[::3] = float("nan")  # unknown ROIs
    out = dual_score(u, m, weight=weight, method=method, missing_roi="uncertainty_only")
    want = ref.dual_score(u.tolist(), m.tolist(), weight=weight, method=method, missing_roi="uncertainty_only")
    assert_close_items(out.score.tolist(), want, atol=1e-12, what=f"{method} uncertainty_only")
    assert torch.isfinite(out.score).all(), "unknown-ROI items must stay rankable"
    assert not out.excluded.any() and not out.invalid.any()
    if method == "weighted":
        assert torch.equal(out.score[::3], u[::3]), "an unknown ROI is scored by U alone"


def test_missing_roi_default_is_uncertainty_only(gen):
    u, m = _random_pair(gen, 10)
    m[4] = float("nan")
    assert float(dual_score(u, m).score[4]) == float(u[4])


@pytest.mark.parametrize("method", ["weighted", "rank"])
def test_missing_roi_exclude(method, gen):
    u, m = _random_pair(gen, 30)
    unknown = torch.zeros(30, dtype=torch.bool)
    unknown[[1, 5, 6, 29]] = True
    m[unknown] = float("nan")
    out = dual_score(u, m, method=method, missing_roi="exclude")
    assert torch.equal(out.excluded, unknown)
    assert out.n_excluded == 4
    assert torch.isnan(out.score[unknown]).all()
    assert torch.isfinite(out.score[~unknown]).all()
    want = ref.dual_score(u.tolist(), m.tolist(), method=method, missing_roi="exclude")
    assert_close_items(out.score.tolist(), want, atol=1e-12, what=f"{method} exclude")


# --------------------------------------------------------------------------- dual score: rank
@pytest.mark.parametrize("weight", [0.0, 0.5, 0.8, 1.0])
def test_rank_fusion_matches_reference(weight, gen):
    u, m = _random_pair(gen, 60)
    m = m * 1e-3  # a different scale: rank fusion must not care
    u[::7] = u[0]  # ties share their mid-rank
    out = dual_score(u, m, weight=weight, method="rank")
    want = ref.dual_score(u.tolist(), m.tolist(), weight=weight, method="rank")
    assert_close_items(out.score.tolist(), want, atol=1e-12, what=f"rank λ={weight}")
    assert torch.all((out.score > 0) & (out.score < 1))


def test_percentile_ranks_matches_reference(gen):
    values = torch.randint(0, 6, (40,), generator=gen).double()
    among = torch.rand(40, generator=gen) < 0.8
    got = percentile_ranks(values, among)
    want = ref.percentile_ranks(values.tolist(), among.tolist())
    assert_close_items(got.tolist(), want, atol=1e-12, what="percentile ranks")
    assert torch.isnan(got[~among]).all()


def test_percentile_ranks_of_nothing_is_all_nan():
    got = percentile_ranks(torch.rand(5, dtype=torch.float64), torch.zeros(5, dtype=torch.bool))
    assert torch.isnan(got).all()


# --------------------------------------------------------------------------- dual score: invalid items
@pytest.mark.parametrize("method", ["weighted", "rank"])
def test_invalid_items_score_minus_inf(method, gen):
    u, m = _random_pair(gen, 20)
    u[2] = float("nan")  # logits were not finite
    m[5] = float("inf")
    flags = torch.zeros(20, dtype=torch.bool)
    flags[9] = True  # flagged upstream
    with pytest.warns(NonFiniteInputWarning, match="3 item"):
        out = dual_score(u, m, method=method, invalid=flags)
    bad = torch.zeros(20, dtype=torch.bool)
    bad[[2, 5, 9]] = True
    assert torch.equal(out.invalid, bad) and out.n_invalid == 3
    assert torch.all(out.score[bad] == float("-inf"))
    assert torch.isfinite(out.score[~bad]).all()
    want = ref.dual_score(u.tolist(), m.tolist(), method=method, invalid=flags.tolist())
    assert_close_items(out.score.tolist(), want, atol=1e-12, what=f"{method} with invalid items")


def test_invalid_beats_missing_roi_policy(gen):
    """An invalid item with an unknown ROI is invalid (-inf), not excluded (NaN)."""
    u, m = _random_pair(gen, 4)
    m[1] = float("nan")
    flags = torch.tensor([False, True, False, False])
    with pytest.warns(NonFiniteInputWarning):
        out = dual_score(u, m, missing_roi="exclude", invalid=flags)
    assert out.score[1] == float("-inf") and bool(out.invalid[1]) and not bool(out.excluded[1])


def test_alignment_scores_passed_directly(gen):
    u = torch.rand(5, generator=gen, dtype=torch.float64)
    dice = torch.tensor([0.2, float("nan"), 0.9, float("nan"), 0.0])
    invalid = torch.tensor([False, False, False, True, False])
    scores = AlignmentScores(dice, dice.clone(), dice.clone(), dice.clone(), invalid)
    with pytest.warns(NonFiniteInputWarning, match="1 item"):
        out = dual_score(u, scores, weight=0.4)
    misalignment = (1.0 - dice.double()).tolist()
    want = ref.dual_score(u.tolist(), misalignment, weight=0.4, invalid=invalid.tolist())
    assert_close_items(out.score.tolist(), want, atol=1e-7, what="AlignmentScores input")
    assert out.score[3] == float("-inf"), "AlignmentScores.invalid must be honoured"
    assert float(out.score[1]) == float(u[1]), "unknown ROI: U alone"
    # Same as handing over the misalignment and the flags by hand.
    with pytest.warns(NonFiniteInputWarning):
        manual = dual_score(u, scores.misalignment, weight=0.4, invalid=invalid)
    assert torch.equal(out.score, manual.score)


@pytest.mark.parametrize("weight", [-0.1, 1.0000001, float("nan"), float("inf"), "0.5", None])
def test_weight_outside_unit_interval_raises(weight, gen):
    u, m = _random_pair(gen, 3)
    with pytest.raises(ValueError, match="weight"):
        dual_score(u, m, weight=weight)


def test_bad_method_and_policy_raise(gen):
    u, m = _random_pair(gen, 3)
    with pytest.raises(ValueError, match="method"):
        dual_score(u, m, method="borda")
    with pytest.raises(ValueError, match="missing_roi"):
        dual_score(u, m, missing_roi="zero")


def test_no_warning_when_everything_is_finite(gen):
    u, m = _random_pair(gen, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dual_score(u, m)
        uncertainty(torch.randn(4, 3, generator=gen))
        bald(torch.randn(3, 4, 3, generator=gen))


def test_float32_inputs_are_accepted(gen):
    u, m = _random_pair(gen, 6)
    out = dual_score(u.float(), m.float(), weight=0.3)
    want = (0.3 * u.float().double() + 0.7 * m.float().double()).tolist()
    assert_close_items(out.score.tolist(), want, atol=1e-12, what="float32 inputs")
    assert np.all(np.isfinite(out.score.numpy()))
