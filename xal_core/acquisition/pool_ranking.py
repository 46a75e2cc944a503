"""Ranking a whole pool, chunk by chunk, in memory that does not grow with the pool (weighted
fusion) or grows with it (rank fusion needs every item's U and M). ``rank_pool`` takes one pass
and, for rank fusion, keeps the batches (about 50 bytes per item for 3 classes);
``rank_stored_pool`` reads stored batches twice instead and keeps 9 bytes per item (U, Dice and the
invalid flag) between the passes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from xal_core.scoring import NonFiniteInputWarning, Selection, TopK, dual_score

from .batch_scoring import BatchScores, ScoringConfig

__all__ = ["PoolRanking", "rank_fusion", "rank_pool", "rank_stored_pool"]


@dataclass
class PoolRanking:
    """The top-k acquisition list of a pool and what was seen on the way.

    Attributes:
        selection: ids and scores, best first.
        columns: the selected items' metrics (``BatchScores.columns()``), aligned with the ids.
        n_scored: items seen; ``n_invalid``: items with NaN/Inf inputs (ranked last);
        n_excluded: items made ineligible by the missing-ROI policy.
    """

    selection: Selection
    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    n_scored: int = 0
    n_invalid: int = 0
    n_excluded: int = 0


def rank_pool(
    batches: Iterable[BatchScores],
    k: int,
    config: ScoringConfig = ScoringConfig(),
    *,
    on_batch: Callable[[BatchScores], None] | None = None,
) -> PoolRanking:
    """Merge scored batches into the exact top-``k`` (ties by ascending id).

    Args:
        batches: the output of ``score_batch`` over the pool, in any order.
        k: how many items to acquire.
        config: must be the one the batches were scored with (``fusion`` decides the merge).
        on_batch: called with every batch as it arrives (progress bars, per-chunk result files).
    """
    top = TopK(k)
    kept: list[BatchScores] = []
    n_scored = n_invalid = n_excluded = 0
    for batch in batches:
        n_scored += int(batch.ids.numel())
        if on_batch is not None:
            on_batch(batch)
        if config.fusion == "weighted":
            n_invalid += int(batch.invalid.sum())
            n_excluded += int(batch.excluded.sum())
            top.push(batch.ids, batch.score, batch.columns())
        else:
            kept.append(batch)
    if config.fusion == "rank" and kept:
        merged = {name: torch.cat([getattr(b, name) for b in kept]) for name in ("ids", "uncertainty", "dice", "invalid")}
        fused = rank_fusion(merged["uncertainty"], merged["dice"], merged["invalid"], config)
        columns = {name: torch.cat([b.columns()[name] for b in kept]) for name in kept[0].columns()}
        top.push(merged["ids"], fused.score, columns)
        n_invalid, n_excluded = fused.n_invalid, fused.n_excluded
    return PoolRanking(top.result(), top.selected_columns(), n_scored, n_invalid, n_excluded)


def rank_stored_pool(read: Callable[[], Iterable[BatchScores]], k: int,
                     config: ScoringConfig = ScoringConfig()) -> PoolRanking:
    """``rank_pool`` over batches that can be read again (a job's chunk files): the same ranking.

    Weighted fusion reads them once. Rank fusion reads them twice: the first pass keeps only each
    item's uncertainty, Dice and invalid flag, from which the whole pool's rank-fused scores are
    computed (as ``rank_pool`` computes them); the second pushes every batch with its fused scores
    into the top-k. ``read()`` must give the same batches in the same order each time it is called.
    """
    if config.fusion == "weighted":
        return rank_pool(read(), k, config)
    kept: dict[str, list[torch.Tensor]] = {"uncertainty": [], "dice": [], "invalid": []}
    n_scored = 0
    for batch in read():
        n_scored += int(batch.ids.numel())
        for name, values in kept.items():
            values.append(getattr(batch, name).clone())  # not a view that keeps the batch alive
    top = TopK(k)
    if not n_scored:
        return PoolRanking(top.result(), top.selected_columns(), 0, 0, 0)
    fused = rank_fusion(*(torch.cat(values) for values in kept.values()), config)
    del kept
    offset = 0
    for batch in read():
        n = int(batch.ids.numel())
        top.push(batch.ids, fused.score[offset:offset + n], batch.columns())
        offset += n
    if offset != n_scored:
        raise RuntimeError(f"rank_stored_pool: the second read gave {offset} items, the first {n_scored}")
    return PoolRanking(top.result(), top.selected_columns(), n_scored, fused.n_invalid, fused.n_excluded)


def rank_fusion(uncertainty: torch.Tensor, dice: torch.Tensor, invalid: torch.Tensor, config: ScoringConfig):
    """Rank-fused dual scores of a set of items (docs/contract.md): ranks are relative to the set, so
    the set is the whole pool for a job (``rank_pool``) and the batch for an inline ``ScoreBatch``.
    The one place both call. Non-finite items were reported when their batch was scored, so the
    fusion does not warn again. Returns ``dual_score``'s result (``score``, ``n_invalid``, ``n_excluded``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)
        return dual_score(uncertainty, 1.0 - dice, weight=config.weight, method="rank",
                          missing_roi=config.missing_roi, invalid=invalid)
