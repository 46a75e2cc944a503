"""Batch scoring and pool ranking: the chunked pipeline equals the whole-pool computation."""

from __future__ import annotations

import warnings

import pytest
import torch

from xal_core.acquisition import ScoringConfig, rank_pool, score_batch
from xal_core.data.synthetic_features import CASES, SyntheticFeaturePool
from xal_core.scoring import NonFiniteInputWarning, Roi, cam_alignment, dual_score, rank_order, uncertainty


def _score_pool(pool: SyntheticFeaturePool, config: ScoringConfig, chunk: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)
        for part in pool.chunks(chunk):
            yield score_batch(part.ids, part.logits, part.features, part.cam_weights, part.roi, config)


def _whole_pool_scores(pool: SyntheticFeaturePool, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The same pool scored in one batch with the scoring functions called directly."""
    whole = pool.chunk(0, pool.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)
        alignment = cam_alignment(whole.features, whole.cam_weights, whole.roi, threshold=config.threshold)
        u = uncertainty(whole.logits, config.uncertainty)
        fused = dual_score(u, alignment, weight=config.weight, method=config.fusion, missing_roi=config.missing_roi)
    return whole.ids, fused.score


@pytest.mark.parametrize("fusion", ["weighted", "rank"])
@pytest.mark.parametrize("missing_roi", ["uncertainty_only", "exclude"])
def test_chunked_ranking_equals_whole_pool_ranking(fusion: str, missing_roi: str) -> None:
    pool = SyntheticFeaturePool(size=700, channels=16, frame=48, seed=3, corrupt=4)
    config = ScoringConfig(uncertainty="margin", weight=0.3, threshold=0.4, fusion=fusion, missing_roi=missing_roi)
    ranking = rank_pool(_score_pool(pool, config, chunk=128), k=90, config=config)

    ids, scores = _whole_pool_scores(pool, config)
    eligible = ~torch.isnan(scores)
    order = rank_order(ids[eligible], scores[eligible])[:90]
    assert ranking.selection.ids.tolist() == ids[eligible][order].tolist()
    torch.testing.assert_close(ranking.selection.scores, scores[eligible][order], rtol=0, atol=1e-6)
    assert ranking.n_scored == pool.size
    assert ranking.n_invalid == pool.corrupt
    unknown = pool.chunk(0, pool.size).roi.counts < 0
    corrupt = torch.isin(torch.arange(pool.size), pool.corrupt_ids())
    expected_excluded = int((unknown & ~corrupt).sum()) if missing_roi == "exclude" else 0
    assert ranking.n_excluded == expected_excluded


def test_selected_columns_describe_the_selected_items() -> None:
    pool = SyntheticFeaturePool(size=300, channels=8, frame=32, seed=1, corrupt=0)
    config = ScoringConfig()
    batches = list(_score_pool(pool, config, chunk=64))
    ranking = rank_pool(iter(batches), k=25, config=config)
    ids = torch.cat([b.ids for b in batches])
    per_item = {name: torch.cat([b.columns()[name] for b in batches]) for name in batches[0].columns()}
    rows = torch.searchsorted(ids, ranking.selection.ids)  # ids are 0..n-1 in order
    for name, selected in ranking.columns.items():
        torch.testing.assert_close(selected, per_item[name][rows], equal_nan=True, msg=name)


def test_corrupt_items_rank_last_and_are_counted() -> None:
    pool = SyntheticFeaturePool(size=200, channels=8, frame=32, seed=5, corrupt=3)
    config = ScoringConfig()
    ranking = rank_pool(_score_pool(pool, config, chunk=50), k=pool.size, config=config)
    assert ranking.selection.ids[-3:].sort().values.tolist() == pool.corrupt_ids().tolist()
    assert torch.isinf(ranking.selection.scores[-3:]).all()
    assert ranking.n_invalid == 3


def test_score_batch_rejects_mismatched_ids() -> None:
    roi = Roi.from_masks(torch.rand(2, 8, 8) > 0.5)
    with pytest.raises(ValueError, match="logits"):
        score_batch(torch.arange(3), torch.randn(2, 3), torch.rand(2, 4, 3, 3), torch.rand(2, 4), roi)
    with pytest.raises(ValueError, match="ids"):
        score_batch(torch.rand(2), torch.randn(2, 3), torch.rand(2, 4, 3, 3), torch.rand(2, 4), roi)


@pytest.mark.parametrize(
    "field, value, message",
    [("uncertainty", "variance", "uncertainty"), ("weight", 1.5, "weight"), ("threshold", 0.0, "threshold"),
     ("fusion", "max", "fusion"), ("missing_roi", "zero", "missing_roi")],
)
def test_scoring_config_validates(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoringConfig(**{field: value})


def test_synthetic_pool_is_deterministic_per_chunk() -> None:
    pool = SyntheticFeaturePool(size=500, channels=8, frame=40, seed=9)
    again = SyntheticFeaturePool(size=500, channels=8, frame=40, seed=9)
    a, b = pool.chunk(100, 180), again.chunk(100, 180)
    torch.testing.assert_close(a.features, b.features, equal_nan=True)
    torch.testing.assert_close(a.logits, b.logits)
    assert torch.equal(a.roi.counts, b.roi.counts) and torch.equal(a.case, b.case)
    other = SyntheticFeaturePool(size=500, channels=8, frame=40, seed=10).chunk(100, 180)
    assert not torch.equal(a.logits, other.logits)
    assert set(a.case.tolist()) <= set(range(len(CASES)))


def test_synthetic_cases_have_the_intended_alignment() -> None:
    """Aligned items must score a much higher Dice than shortcut items, or the demo shows nothing."""
    pool = SyntheticFeaturePool(size=2000, seed=2, corrupt=0)
    whole = pool.chunk(0, pool.size)
    dice = cam_alignment(whole.features, whole.cam_weights, whole.roi).dice
    aligned = dice[whole.case == CASES.index("aligned")].nanmean()
    shortcut = dice[whole.case == CASES.index("shortcut")].nanmean()
    assert aligned > 0.4 and shortcut < 0.1, (float(aligned), float(shortcut))
    assert torch.isnan(dice[whole.case == CASES.index("unknown_roi")]).all()


def test_synthetic_pool_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="classes"):
        SyntheticFeaturePool(classes=1)
    with pytest.raises(ValueError, match="chunk"):
        SyntheticFeaturePool(size=10).chunk(5, 20)
