"""Batch-diversity modes: power / softrank sampling and k-center over pooled features."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest

from xal_core.acquisition.strategies import Diverse, ScoreTable, Strategy, make_strategy


class Fixed(Strategy):
    """Test helper: the scores are given, one per row."""

    name: ClassVar[str] = "fixed"

    def __init__(self, scores):
        self.values = np.asarray(scores, dtype=np.float64)

    def _score(self, table):
        return self.values


def table_of(n: int, **columns) -> ScoreTable:
    return ScoreTable(
        **{"ids": np.arange(100, 100 + n), "probabilities": np.full((n, 2), 0.5), "dice": np.full(n, np.nan), **columns}
    )


SCORES = np.array([0.2, 0.9, 0.5, 0.9, 0.05, 0.7, 0.3, 0.6])  # top-k order: 101, 103, 105, 107, 102, 106, 100, 104


# --------------------------------------------------------------------------- power / softrank
@pytest.mark.parametrize("mode", ["power", "softrank"])
def test_stochastic_modes_are_reproducible_from_the_seed(mode):
    strategy = Diverse(Fixed(SCORES), mode, beta=1.0)
    table = table_of(8)
    a = strategy.select(table, 4, np.random.default_rng(42))
    b = strategy.select(table, 4, np.random.default_rng(42))
    assert a.ids.tolist() == b.ids.tolist() and a.strategy == f"fixed+{mode}"
    assert a.scores.tolist() == [SCORES[i - 100] for i in a.ids]
    assert len({tuple(strategy.select(table, 4, np.random.default_rng(s)).ids) for s in range(30)}) > 3


@pytest.mark.parametrize("mode", ["power", "softrank"])
def test_infinite_beta_is_exactly_the_deterministic_top_k(mode):
    top = [101, 103, 105, 107, 102]  # 101 and 103 tie at 0.9: ascending id, as in the base ranking
    got = Diverse(Fixed(SCORES), mode, beta=math.inf).select(table_of(8), 5, np.random.default_rng(0))
    assert got.ids.tolist() == top == Fixed(SCORES).select(table_of(8), 5).ids.tolist()


@pytest.mark.parametrize("mode", ["power", "softrank"])
def test_large_beta_degenerates_to_top_k(mode):
    distinct = np.array([0.2, 0.9, 0.5, 0.8, 0.05, 0.7, 0.3, 0.6])
    top = Fixed(distinct).select(table_of(8), 4).ids.tolist()
    for seed in range(20):
        got = Diverse(Fixed(distinct), mode, beta=1e4).select(table_of(8), 4, np.random.default_rng(seed))
        assert got.ids.tolist() == top, f"seed {seed}"


def test_power_sampling_probabilities_follow_score_to_the_beta():
    # two items: P(first pick = the 0.9 item) = 0.9^β / (0.9^β + 0.1^β)
    rng = np.random.default_rng(2024)
    for beta, want in ((1.0, 0.9), (0.5, 0.75), (0.0, 0.5)):
        strategy = Diverse(Fixed([0.1, 0.9]), "power", beta=beta)
        first = [int(strategy.select(table_of(2), 1, rng).ids[0]) for _ in range(4000)]
        share = first.count(101) / len(first)
        assert abs(share - want) < 0.03, f"beta {beta}: share {share:.3f}, want {want}"


def test_softrank_probabilities_follow_rank_to_the_minus_beta():
    rng = np.random.default_rng(7)
    strategy = Diverse(Fixed([0.1, 0.9, 0.5]), "softrank", beta=1.0)  # ranks: 101 -> 1, 102 -> 2, 100 -> 3
    first = [int(strategy.select(table_of(3), 1, rng).ids[0]) for _ in range(4000)]
    shares = [first.count(i) / len(first) for i in (101, 102, 100)]
    want = np.array([1, 1 / 2, 1 / 3]) / (1 + 1 / 2 + 1 / 3)
    assert np.abs(np.array(shares) - want).max() < 0.03, f"shares {shares}, want {want.tolist()}"


def test_power_puts_zero_scores_after_positive_ones_and_skips_unselectable_items():
    strategy = Diverse(Fixed([0.0, 0.0, 0.4, 0.0, -np.inf, 0.2]), "power", beta=1.0)
    invalid = np.array([False, False, False, True, False, False])  # 103
    seen_second = set()
    for seed in range(40):
        got = strategy.select(table_of(6, invalid=invalid), 10, np.random.default_rng(seed)).ids.tolist()
        assert sorted(got[:2]) == [102, 105] and sorted(got[2:]) == [100, 101]
        seen_second.add(got[2])
    assert seen_second == {100, 101}  # the zero-score items come in random order


def test_power_refuses_negative_scores():
    with pytest.raises(ValueError, match="power sampling needs scores >= 0"):
        Diverse(Fixed([0.5, -0.1]), "power").select(table_of(2), 1, np.random.default_rng(0))


def test_stochastic_modes_need_an_rng():
    with pytest.raises(ValueError, match="fixed\\+power: is stochastic; pass rng"):
        Diverse(Fixed(SCORES), "power").select(table_of(8), 2)


def test_power_on_the_dual_score_through_make_strategy():
    table = ScoreTable(
        ids=np.array([1, 2, 3, 4]),
        probabilities=np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.99, 0.01]]),
        dice=np.array([0.0, 0.3, np.nan, 1.0]),
    )
    strategy = make_strategy("dual", weight=0.5, diversity="power", beta=2.0)
    assert strategy.label == "dual+power"
    np.testing.assert_array_equal(strategy.scores(table), make_strategy("dual").scores(table))
    got = strategy.select(table, 4, np.random.default_rng(1))
    assert sorted(got.ids.tolist()) == [1, 2, 3, 4]


# --------------------------------------------------------------------------- k-center
def test_kcenter_picks_spread_points_where_top_k_picks_near_duplicates():
    # ids 100-102: three near-duplicates with the highest scores; 103, 104: far away, lower scores
    embeddings = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [5.0, 5.0], [-5.0, 5.0], [0.02, 0.02]])
    scores = np.array([0.9, 0.89, 0.88, 0.5, 0.4, 0.1])
    table = table_of(6, embeddings=embeddings)
    assert Fixed(scores).select(table, 3).ids.tolist() == [100, 101, 102]
    got = Diverse(Fixed(scores), "kcenter", candidate_factor=2).select(table, 3)
    assert got.ids.tolist() == [100, 103, 104]  # the best item, then the farthest, then the farthest from both
    assert got.scores.tolist() == [0.9, 0.5, 0.4] and got.strategy == "fixed+kcenter"


def test_kcenter_candidates_are_limited_to_the_best_items():
    embeddings = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [5.0, 5.0], [-5.0, 5.0], [0.02, 0.02]])
    scores = np.array([0.9, 0.89, 0.88, 0.5, 0.4, 0.1])
    table = table_of(6, embeddings=embeddings)
    # candidate_factor 1: exactly the base top-k
    assert Diverse(Fixed(scores), "kcenter", candidate_factor=1).select(table, 3).ids.tolist() == [100, 101, 102]
    # 2 picks x 2 = 4 candidates (100-103): 104 is not among them
    assert Diverse(Fixed(scores), "kcenter", candidate_factor=2).select(table, 2).ids.tolist() == [100, 103]


def test_kcenter_is_deterministic_and_breaks_distance_ties_by_rank():
    # a square: 101 is best; 100 and 102 are equally far from it, 102 ranks higher; 103 is farthest
    embeddings = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scores = np.array([0.5, 0.9, 0.6, 0.1])
    got = Diverse(Fixed(scores), "kcenter").select(table_of(4, embeddings=embeddings), 3).ids.tolist()
    assert got == [101, 103, 102]


def test_kcenter_without_embeddings_says_what_is_missing():
    with pytest.raises(ValueError, match="k-center needs table.embeddings"):
        make_strategy("entropy", diversity="kcenter").select(table_of(3), 2)


def test_kcenter_skips_non_finite_embeddings_and_unselectable_items():
    embeddings = np.array([[0.0, 0.0], [np.nan, 1.0], [3.0, 0.0], [9.0, 9.0]])
    invalid = np.array([False, False, False, True])
    strategy = Diverse(Fixed([0.9, 0.8, 0.7, 0.6]), "kcenter")
    with pytest.warns(UserWarning, match="1 candidate\\(s\\) have NaN/Inf embeddings"):
        got = strategy.select(table_of(4, embeddings=embeddings, invalid=invalid), 5)
    assert got.ids.tolist() == [100, 102]


# --------------------------------------------------------------------------- construction
def test_diverse_construction_errors():
    with pytest.raises(ValueError, match="diversity: expected one of power, softrank, kcenter"):
        make_strategy("dual", diversity="badge")
    with pytest.raises(ValueError, match="beta: expected a number >= 0"):
        make_strategy("dual", diversity="power", beta=-1)
    with pytest.raises(ValueError, match="candidate_factor: expected a number >= 1"):
        make_strategy("dual", diversity="kcenter", candidate_factor=0.5)
    with pytest.raises(ValueError, match="already has a diversity mode"):
        Diverse(make_strategy("dual", diversity="power"), "kcenter")
    with pytest.raises(ValueError, match="base: expected a Strategy"):
        Diverse("dual", "power")
