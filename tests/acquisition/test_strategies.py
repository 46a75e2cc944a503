"""Acquisition strategies on fixed score tables whose rankings are worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from xal_core.acquisition.strategies import (
    STRATEGY_NAMES,
    Acquisition,
    Bald,
    DualRank,
    DualWeighted,
    Entropy,
    Misalignment,
    NoRoiWarning,
    ScoreTable,
    make_strategy,
)
from xal_core.acquisition.strategies.registry import _REGISTRY
from xal_core.scoring import NonFiniteInputWarning, bald, dual_score, uncertainty

# --------------------------------------------------------------------------- K = 3 table
# id: probabilities          entropy  margin  least confidence
#  4: [0.5, 0.5, 0.0]         0.631    1.0     0.75
#  9: [0.4, 0.3, 0.3]         0.991    0.9     0.9
#  2: [0.8, 0.1, 0.1]         0.582    0.3     0.3
#  7: [1.0, 0.0, 0.0]         0        0       0
#  6: [0.4, 0.3, 0.3]         0.991    0.9     0.9     (ties with 9: 6 goes first)
#  3: [0.6, 0.2, 0.2]         0.865    0.6     0.6
THREE_CLASS = {
    4: [0.5, 0.5, 0.0],
    9: [0.4, 0.3, 0.3],
    2: [0.8, 0.1, 0.1],
    7: [1.0, 0.0, 0.0],
    6: [0.4, 0.3, 0.3],
    3: [0.6, 0.2, 0.2],
}
HAND_RANKING = {
    "entropy": [6, 9, 3, 4, 2, 7],
    "margin": [4, 6, 9, 3, 2, 7],
    "least_confidence": [6, 9, 4, 3, 2, 7],
}
HAND_VALUES = {
    "entropy": {4: math.log(2) / math.log(3), 7: 0.0, 9: -(0.4 * math.log(0.4) + 0.6 * math.log(0.3)) / math.log(3)},
    "margin": {4: 1.0, 9: 0.9, 2: 0.3, 7: 0.0},
    "least_confidence": {4: 0.75, 9: 0.9, 3: 0.6, 7: 0.0},
}


def three_class_table(**columns) -> ScoreTable:
    ids = np.array(list(THREE_CLASS))
    defaults = {"ids": ids, "probabilities": np.array(list(THREE_CLASS.values())), "dice": np.full(ids.size, np.nan)}
    return ScoreTable(**{**defaults, **columns})


# --------------------------------------------------------------------------- K = 2 table for the dual score
# id  p        U (entropy)  dice   M      dual λ=.5   misalignment   rank fusion
#  1  .5/.5    1            1.0    0      .5          0              (.8 + .125)/2 = .4625
#  2  .9/.1    .469         0.0    1      .7345       1              (.3 + .875)/2 = .5875
#  3  1/0      0            0.2    .8     .4          .8             (.1 + .625)/2 = .3625
#  4  .7/.3    .881         NaN    NaN    .881 (U)    .881 (U)       .5 (U percentile)
#  5  .5/.5    1            0.5    .5     .75         .5             (.8 + .375)/2 = .5875
DUAL_IDS = np.array([1, 2, 3, 4, 5])
DUAL_PROBABILITIES = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0], [0.7, 0.3], [0.5, 0.5]])
DUAL_DICE = np.array([1.0, 0.0, 0.2, np.nan, 0.5])
DUAL_RANKING = {
    ("dual", "uncertainty_only"): [4, 5, 2, 1, 3],
    ("dual", "exclude"): [5, 2, 1, 3],
    ("dual_rank", "uncertainty_only"): [2, 5, 4, 1, 3],  # 2 and 5 tie at .5875: ascending id
    ("dual_rank", "exclude"): [2, 5, 1, 3],
    ("misalignment", "uncertainty_only"): [2, 4, 3, 5, 1],
    ("misalignment", "exclude"): [2, 3, 5, 1],
}


def dual_table(**columns) -> ScoreTable:
    return ScoreTable(**{"ids": DUAL_IDS, "probabilities": DUAL_PROBABILITIES, "dice": DUAL_DICE, **columns})


# --------------------------------------------------------------------------- registry
def test_registry_holds_exactly_the_listed_names():
    assert sorted(_REGISTRY) == sorted(STRATEGY_NAMES)
    for name in STRATEGY_NAMES:
        strategy = make_strategy(name)
        assert strategy.name == name and strategy.label == name
        assert "References:" in type(strategy).__doc__, f"{name}: docstring lacks a References line"


def test_make_strategy_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="expected one of random, entropy"):
        make_strategy("coreset")
    with pytest.raises(ValueError, match="strategy 'entropy': unknown parameter\\(s\\) weight \\(it takes none\\)"):
        make_strategy("entropy", weight=0.3)
    with pytest.raises(ValueError, match="beta: only apply with diversity"):
        make_strategy("dual", beta=2.0)
    with pytest.raises(ValueError, match="weight: expected a number in \\[0, 1\\]"):
        make_strategy("dual", weight=1.5)
    with pytest.raises(ValueError, match="missing_roi: expected one of uncertainty_only, exclude"):
        make_strategy("dual_rank", missing_roi="zero")
    with pytest.raises(ValueError, match="uncertainty: expected one of"):
        make_strategy("misalignment", uncertainty="variance")


# --------------------------------------------------------------------------- uncertainty sampling
@pytest.mark.parametrize("name", sorted(HAND_RANKING))
def test_uncertainty_rankings_by_hand(name):
    table = three_class_table()
    strategy = make_strategy(name)
    got = strategy.select(table, k=6)
    assert isinstance(got, Acquisition) and got.strategy == name
    assert got.ids.dtype == np.int64 and got.scores.dtype == np.float64
    assert got.ids.tolist() == HAND_RANKING[name]
    scores = dict(zip(table.ids.tolist(), strategy.scores(table).tolist(), strict=True))
    for item, value in HAND_VALUES[name].items():
        assert scores[item] == pytest.approx(value, abs=1e-6), f"{name}, id {item}"
    assert got.scores.tolist() == [scores[i] for i in HAND_RANKING[name]]


@pytest.mark.parametrize("name", sorted(HAND_RANKING))
def test_uncertainty_equals_the_scoring_module(name):
    table = three_class_table()
    logits = torch.log(torch.from_numpy(table.probabilities).clamp_min(1e-300))
    want = uncertainty(logits, name).double().numpy()
    np.testing.assert_array_equal(make_strategy(name).scores(table), want)


def test_k_larger_than_the_pool_returns_every_selectable_item():
    invalid = np.array([False, False, False, False, True, False])  # id 6
    got = make_strategy("entropy").select(three_class_table(invalid=invalid), k=100)
    assert got.ids.tolist() == [9, 3, 4, 2, 7]


def test_prefix_property_k_items_are_the_first_of_the_full_ranking():
    for k in range(1, 7):
        assert make_strategy("margin").select(three_class_table(), k).ids.tolist() == HAND_RANKING["margin"][:k]


@pytest.mark.parametrize("k", [0, -1, 2.0, True, None])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        make_strategy("entropy").select(three_class_table(), k)


def test_row_order_does_not_change_the_ranking():
    table = three_class_table()
    perm = np.array([5, 3, 0, 2, 4, 1])
    shuffled = ScoreTable(ids=table.ids[perm], probabilities=table.probabilities[perm], dice=table.dice[perm])
    assert make_strategy("entropy").select(shuffled, 6).ids.tolist() == HAND_RANKING["entropy"]


def test_non_finite_probabilities_are_never_selected_and_reported():
    probabilities = np.array(list(THREE_CLASS.values()))
    probabilities[2] = np.nan  # id 2
    table = three_class_table(probabilities=probabilities)
    with pytest.warns(NonFiniteInputWarning, match="1 item"):
        scores = make_strategy("entropy").scores(table)
    assert scores[2] == -np.inf
    with pytest.warns(NonFiniteInputWarning):
        assert make_strategy("entropy").select(table, 6).ids.tolist() == [6, 9, 3, 4, 7]


def test_invalid_items_are_never_selected_without_a_warning():
    probabilities = np.array(list(THREE_CLASS.values()))
    probabilities[1] = np.nan  # id 9, flagged invalid upstream: known, so no warning
    invalid = np.zeros(6, dtype=bool)
    invalid[[1, 3]] = True  # ids 9 and 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = make_strategy("least_confidence").select(three_class_table(probabilities=probabilities, invalid=invalid), 6)
    assert got.ids.tolist() == [6, 4, 3, 2]


def test_empty_pool_selects_nothing():
    table = ScoreTable(ids=np.zeros(0, dtype=np.int64), probabilities=np.zeros((0, 3)), dice=np.zeros(0))
    for name in STRATEGY_NAMES:
        if name == "bald":
            continue
        got = make_strategy(name).select(table, 3, np.random.default_rng(0))
        assert len(got) == 0 and got.ids.dtype == np.int64


# --------------------------------------------------------------------------- BALD
def test_bald_on_a_constructed_mc_example():
    # id 10: the passes are confident and disagree -> I = log 2 / log 2 = 1 (epistemic)
    # id 11: every pass says 50/50                 -> I = 0 although the entropy is maximal (aleatoric)
    # id 12: the passes agree at 0.9/0.1           -> I = 0
    # id 13: passes 0.9/0.1 and 0.5/0.5            -> small but positive
    passes = np.array([
        [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.9, 0.1]],
        [[0.0, 1.0], [0.5, 0.5], [0.9, 0.1], [0.5, 0.5]],
    ])
    table = ScoreTable(
        ids=np.array([10, 11, 12, 13]), probabilities=passes.mean(axis=0), dice=np.full(4, np.nan), mc_probabilities=passes
    )
    scores = Bald().scores(table)
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert scores[1] == pytest.approx(0.0, abs=1e-6) and scores[2] == pytest.approx(0.0, abs=1e-6)
    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    want_13 = (h([0.7, 0.3]) - (h([0.9, 0.1]) + h([0.5, 0.5])) / 2) / math.log(2)
    assert scores[3] == pytest.approx(want_13, abs=1e-6)
    assert Bald().select(table, 4).ids.tolist() == [10, 13, 11, 12]  # 11 and 12 tie at 0: ascending id
    # entropy cannot tell 10 from 11: both average to 50/50
    assert Entropy().scores(table)[:2] == pytest.approx([1.0, 1.0], abs=1e-6)
    logits = torch.log(torch.from_numpy(passes).clamp_min(1e-300))
    np.testing.assert_array_equal(scores, bald(logits).double().numpy())


def test_bald_without_mc_passes_says_what_is_missing():
    with pytest.raises(ValueError, match="bald: the score table has no mc_probabilities"):
        make_strategy("bald").select(three_class_table(), 2)
    with pytest.raises(ValueError, match="no mc_probabilities"):
        make_strategy("dual", uncertainty="bald").scores(dual_table())


# --------------------------------------------------------------------------- misalignment and the dual score
@pytest.mark.parametrize(("name", "policy"), sorted(DUAL_RANKING))
def test_dual_rankings_by_hand(name, policy):
    got = make_strategy(name, missing_roi=policy).select(dual_table(), k=10)
    assert got.ids.tolist() == DUAL_RANKING[(name, policy)]


def test_dual_hand_values():
    table = dual_table()
    u4 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3)) / math.log(2)
    u2 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    np.testing.assert_allclose(DualWeighted().scores(table), [0.5, (u2 + 1) / 2, 0.4, u4, 0.75], atol=1e-6)
    np.testing.assert_allclose(DualRank().scores(table), [0.4625, 0.5875, 0.3625, 0.5, 0.5875], atol=1e-12)
    np.testing.assert_allclose(Misalignment().scores(table), [0.0, 1.0, 0.8, u4, 0.5], atol=1e-6)
    np.testing.assert_allclose(DualWeighted(weight=0.2).scores(table)[:3], [0.2, 0.2 * u2 + 0.8, 0.64], atol=1e-6)


@pytest.mark.parametrize("method", ["weighted", "rank"])
@pytest.mark.parametrize("policy", ["uncertainty_only", "exclude"])
@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_dual_numbers_equal_dual_score(method, policy, weight):
    rng = np.random.default_rng(7)
    n = 40
    probabilities = rng.dirichlet(np.ones(4) * 0.7, size=n)
    dice = rng.random(n)
    dice[rng.random(n) < 0.25] = np.nan
    invalid = rng.random(n) < 0.1
    table = ScoreTable(ids=rng.permutation(1000)[:n], probabilities=probabilities, dice=dice, invalid=invalid)
    u = uncertainty(torch.log(torch.from_numpy(probabilities)), "entropy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)  # it counts the invalid items
        want = dual_score(
            u, torch.from_numpy(1.0 - dice), weight=weight, method=method, missing_roi=policy,
            invalid=torch.from_numpy(invalid),
        ).score.numpy()
    strategy = make_strategy("dual" if method == "weighted" else "dual_rank", weight=weight, missing_roi=policy)
    got = strategy.scores(table)
    selectable = np.isfinite(want)
    np.testing.assert_array_equal(got[selectable], want[selectable])
    assert np.all(got[~selectable] == -np.inf)


def test_dual_equals_the_service_batch_scores():
    from xal_core.acquisition import ScoringConfig, score_batch
    from xal_core.scoring import Roi

    gen = torch.Generator().manual_seed(3)
    features, weights = torch.rand(6, 8, 5, 5, generator=gen), torch.randn(6, 8, generator=gen)
    masks = torch.rand(6, 20, 20, generator=gen) > 0.6
    roi = Roi.from_masks(masks, known=torch.tensor([True, True, False, True, True, True]))
    batch = score_batch(torch.arange(100, 106), torch.randn(6, 3, generator=gen) * 2, features, weights, roi, ScoringConfig())
    table = ScoreTable.from_batch_scores([batch])
    assert table.ids.tolist() == list(range(100, 106)) and np.isnan(table.dice[2])
    np.testing.assert_allclose(make_strategy("dual").scores(table), batch.score.numpy(), atol=1e-6)


def test_no_roi_anywhere_warns_once_and_falls_back_to_uncertainty():
    table = dual_table(dice=np.full(5, np.nan))
    strategy = make_strategy("dual")
    with pytest.warns(NoRoiWarning, match="none of the 5 selectable items has a known ROI.*missing_roi='uncertainty_only'"):
        got = strategy.select(table, 5)
    assert got.ids.tolist() == make_strategy("entropy").select(table, 5).ids.tolist() == [1, 5, 4, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same strategy object says it once
        strategy.select(table, 5)


@pytest.mark.parametrize("name", ["misalignment", "dual", "dual_rank"])
def test_no_roi_anywhere_with_exclude_acquires_nothing_and_says_so(name):
    strategy = make_strategy(name, missing_roi="exclude")
    with pytest.warns(NoRoiWarning, match="missing_roi='exclude' excludes every item"):
        got = strategy.select(dual_table(dice=np.full(5, np.nan)), 3)
    assert len(got) == 0


def test_rois_known_only_on_invalid_items_count_as_none():
    invalid = np.array([True, False, False, False, False])
    dice = np.array([0.5, np.nan, np.nan, np.nan, np.nan])
    with pytest.warns(NoRoiWarning, match="none of the 4 selectable items"):
        make_strategy("dual").select(dual_table(dice=dice, invalid=invalid), 2)


def test_some_rois_known_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_strategy("dual").select(dual_table(), 2)


# --------------------------------------------------------------------------- random
def test_random_is_reproducible_and_skips_unselectable_items():
    invalid = np.array([False, True, False, False, False])
    table = dual_table(invalid=invalid)
    first = make_strategy("random").select(table, 3, np.random.default_rng(11))
    again = make_strategy("random").select(table, 3, np.random.default_rng(11))
    assert first.ids.tolist() == again.ids.tolist() and 2 not in first.ids
    assert first.scores.tolist() == [0.0, 0.0, 0.0]
    draws = {tuple(make_strategy("random").select(table, 3, np.random.default_rng(s)).ids) for s in range(20)}
    assert len(draws) > 5
    assert sorted(make_strategy("random").select(table, 10, np.random.default_rng(0)).ids) == [1, 3, 4, 5]


def test_random_is_uniform():
    table = ScoreTable(ids=np.arange(5), probabilities=np.full((5, 2), 0.5), dice=np.full(5, np.nan))
    rng = np.random.default_rng(123)
    counts = np.zeros(5)
    draws = 3000
    for _ in range(draws):
        counts[make_strategy("random").select(table, 2, rng).ids] += 1
    expected = draws * 2 / 5
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.5, f"counts {counts.tolist()} are not uniform (chi2 = {chi2:.1f}, 4 dof, p < 0.001)"


def test_random_without_rng_says_so():
    with pytest.raises(ValueError, match="random: is stochastic; pass rng"):
        make_strategy("random").select(dual_table(), 2)
    with pytest.raises(ValueError, match="rng: expected a numpy.random.Generator"):
        make_strategy("random").select(dual_table(), 2, rng=np.random.RandomState(0))


def test_random_does_not_depend_on_row_order():
    table = dual_table()
    perm = np.array([4, 2, 0, 3, 1])
    shuffled = ScoreTable(ids=DUAL_IDS[perm], probabilities=DUAL_PROBABILITIES[perm], dice=DUAL_DICE[perm])
    a = make_strategy("random").select(table, 3, np.random.default_rng(5)).ids
    b = make_strategy("random").select(shuffled, 3, np.random.default_rng(5)).ids
    assert a.tolist() == b.tolist()
