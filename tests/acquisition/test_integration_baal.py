"""The baal heuristic with real baal objects (extra ``baal``; skipped where baal is not installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xal_core.acquisition.strategies import NoRoiWarning, ScoreTable, make_strategy

heuristics = pytest.importorskip(
    "baal.active.heuristics",
    reason="baal is not installed: pip install 'xal-ml[baal]' (make test installs it with --no-deps)",
)
from baal.active import ActiveLearningDataset, ActiveLearningLoop  # noqa: E402

from xal_core.integrations.baal import XalHeuristic  # noqa: E402

N, K, T = 12, 3, 4


def mc_predictions(seed: int = 0, n: int = N) -> np.ndarray:
    """baal's layout: [n, K, T] probabilities."""
    rng = np.random.default_rng(seed)
    return np.moveaxis(rng.dirichlet(np.ones(K) * 0.8, size=(T, n)), 0, 2)


def dataset_dice(n: int = N) -> np.ndarray:
    dice = np.linspace(0.0, 1.0, n)
    dice[[2, 5]] = np.nan
    return dice


def test_is_a_baal_heuristic_and_ranks_like_the_xal_strategy():
    predictions = mc_predictions()
    dice = dataset_dice()
    heuristic = XalHeuristic("dual", dice=dice, weight=0.4)
    assert isinstance(heuristic, heuristics.AbstractHeuristic)
    ranks, scores = heuristic.get_ranks(predictions)
    table = ScoreTable(
        ids=np.arange(N), probabilities=predictions.mean(axis=2), dice=dice, mc_probabilities=np.moveaxis(predictions, 2, 0)
    )
    strategy = make_strategy("dual", weight=0.4)
    np.testing.assert_array_equal(scores, strategy.scores(table))
    assert ranks.tolist() == strategy.select(table, N).ids.tolist()
    assert heuristic(predictions).tolist() == ranks.tolist()  # baal's __call__


def test_bald_uses_baals_mc_iterations_and_matches_baals_bald_ranking():
    predictions = mc_predictions(1)
    ours, scores = XalHeuristic("bald").get_ranks(predictions)
    theirs, their_scores = heuristics.BALD().get_ranks(predictions)
    np.testing.assert_allclose(scores, their_scores / np.log(K), atol=1e-6)  # xal divides by log K
    assert ours.tolist() == theirs.tolist()


def test_logits_and_generators_are_accepted_as_baal_produces_them():
    predictions = mc_predictions(2)
    logits = np.log(predictions) + 3.0  # softmax(log p + c) = p
    chunks = (torch.from_numpy(logits[i : i + 5]) for i in range(0, N, 5))
    expected = XalHeuristic("entropy").get_ranks(predictions)
    ranks, scores = XalHeuristic("entropy").get_ranks(chunks)
    assert ranks.tolist() == expected[0].tolist()
    np.testing.assert_allclose(scores, expected[1], atol=1e-6)


def test_active_learning_loop_labels_the_items_xal_ranks_first():
    data = torch.utils.data.TensorDataset(torch.arange(N, dtype=torch.float32)[:, None], torch.zeros(N))
    al_dataset = ActiveLearningDataset(data)
    al_dataset.label([0, 1])  # data set items 0 and 1 are labelled
    fixed = mc_predictions(3)
    dice = dataset_dice()

    def get_probabilities(pool, **_):
        return fixed[~al_dataset.labelled]  # the pool, in baal's pool order

    heuristic = XalHeuristic("dual", dice=dice, dataset=al_dataset)
    loop = ActiveLearningLoop(al_dataset, get_probabilities, heuristic=heuristic, query_size=3)
    table = ScoreTable(ids=np.arange(2, N), probabilities=fixed[2:].mean(axis=2), dice=dice[2:])
    want = make_strategy("dual").select(table, 3).ids
    assert loop.step()
    assert sorted(np.flatnonzero(al_dataset.labelled).tolist()) == sorted([0, 1, *want.tolist()])


def test_the_whole_data_set_array_needs_the_dataset_and_a_stale_array_is_refused():
    heuristic = XalHeuristic("dual", dice=dataset_dice(N + 3))
    with pytest.raises(ValueError, match="dice: 15 rows for a pool of 12 predictions"):
        heuristic.get_ranks(mc_predictions())


def test_dice_callable_is_called_at_every_ranking():
    calls = []

    def dice():
        calls.append(1)
        return dataset_dice()

    heuristic = XalHeuristic("misalignment", dice=dice)
    heuristic.get_ranks(mc_predictions())
    heuristic.get_ranks(mc_predictions(4))
    assert len(calls) == 2


def test_no_dice_at_all_warns_and_ranks_by_uncertainty():
    predictions = mc_predictions(5)
    with pytest.warns(NoRoiWarning, match="falling back to missing_roi='uncertainty_only'"):
        ranks, _ = XalHeuristic("dual").get_ranks(predictions)
    assert ranks.tolist() == XalHeuristic("entropy").get_ranks(predictions)[0].tolist()


def test_stochastic_strategies_need_query_size_and_put_their_batch_first():
    with pytest.raises(ValueError, match="dual\\+power: needs query_size"):
        XalHeuristic("dual", diversity="power")
    predictions = mc_predictions(6)
    ranks, scores = XalHeuristic("dual", dice=dataset_dice(), diversity="power", query_size=4, seed=9).get_ranks(predictions)
    again, _ = XalHeuristic("dual", dice=dataset_dice(), diversity="power", query_size=4, seed=9).get_ranks(predictions)
    assert ranks.tolist() == again.tolist() and sorted(ranks.tolist()) == list(range(N))
    rest = ranks[4:]
    assert np.all(np.diff(scores[rest]) <= 0)  # after the sampled batch: by score


def test_segmentation_outputs_are_refused():
    with pytest.raises(ValueError, match="expected \\[n, K\\] or \\[n, K, T\\]"):
        XalHeuristic("entropy").get_ranks(np.full((4, 2, 8, 8, 3), 0.5))
