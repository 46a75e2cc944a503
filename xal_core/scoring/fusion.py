"""The dual acquisition score: uncertainty and attention misalignment in one number (docs/contract.md).

Conventions that make a ranking over a pool of millions safe:

* an item whose inputs were not finite gets ``-inf``: it still has a place in a ranking, the last;
* an item excluded by the missing-ROI policy gets NaN, which ``TopK`` never selects;
* everything else gets a finite score in ``[0, 1]``, higher = acquire first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inputs import warn_nonfinite
from .parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_WEIGHT,
    FUSION_METHODS,
    FusionMethod,
    MissingRoiPolicy,
    check_choice,
    check_missing_roi,
    check_weight,
)
from .results import AlignmentScores

__all__ = ["DualScore", "FusionMethod", "MissingRoiPolicy", "check_score_pair", "dual_score", "percentile_ranks"]


@dataclass(frozen=True, eq=False)
class DualScore:
    """Result of :func:`dual_score`.

    Attributes:
        score: float64 ``[B]``: finite for rankable items, ``-inf`` for invalid ones, NaN for
            excluded ones.
        invalid: bool ``[B]``, items with non-finite uncertainty or flagged invalid upstream.
        excluded: bool ``[B]``, items dropped by ``missing_roi="exclude"``.
    """

    score: torch.Tensor
    invalid: torch.Tensor
    excluded: torch.Tensor

    @property
    def n_invalid(self) -> int:
        return int(self.invalid.sum())

    @property
    def n_excluded(self) -> int:
        return int(self.excluded.sum())


def dual_score(
    uncertainty: torch.Tensor,
    misalignment: torch.Tensor | AlignmentScores,
    *,
    weight: float = DEFAULT_WEIGHT,
    method: FusionMethod = DEFAULT_FUSION,
    missing_roi: MissingRoiPolicy = DEFAULT_MISSING_ROI,
    invalid: torch.Tensor | None = None,
) -> DualScore:
    """Combine uncertainty ``U`` and misalignment ``M = 1 − Dice`` into one acquisition score.

    Args:
        uncertainty: ``[B]`` in ``[0, 1]`` (NaN = the item's logits were not finite).
        misalignment: ``[B]`` in ``[0, 1]``, NaN where the ROI is unknown; or the
            ``AlignmentScores`` themselves, whose ``invalid`` flags are then honoured too.
        weight: ``λ`` in ``[0, 1]``; ``s = λ·U + (1 − λ)·M``. With ``method="rank"``, the same
            weight blends the two percentile ranks.
        method: ``"weighted"`` (the values) or ``"rank"`` (percentile ranks, robust to the two
            criteria living on different scales; computed over the items given, so pass the whole
            pool's ``U`` and ``M``: a few bytes per item).
        missing_roi: for items whose ROI is unknown, ``"uncertainty_only"`` scores them by ``U``
            alone; ``"exclude"`` makes them ineligible (NaN).
        invalid: optional bool ``[B]`` of items known to be broken upstream.
    """
    alignment_invalid = None
    if isinstance(misalignment, AlignmentScores):
        alignment_invalid = misalignment.invalid
        misalignment = misalignment.misalignment
    u, m = check_score_pair(uncertainty, misalignment)
    check_weight(weight)
    check_choice(method, FUSION_METHODS, "method")
    check_missing_roi(missing_roi)

    bad = ~torch.isfinite(u) | torch.isinf(m)
    for flags, name in ((invalid, "invalid"), (alignment_invalid, "misalignment.invalid")):
        if flags is not None:
            if flags.shape != u.shape:
                raise ValueError(f"{name}: expected shape {tuple(u.shape)}, got {tuple(flags.shape)}")
            bad = bad | flags.to(device=u.device, dtype=torch.bool)
    unknown_roi = torch.isnan(m) & ~bad
    excluded = unknown_roi if missing_roi == "exclude" else torch.zeros_like(unknown_roi)
    eligible = ~bad & ~excluded
    with_roi = eligible & ~unknown_roi

    if method == "weighted":
        u_part, m_part = u, m
    else:
        u_part = percentile_ranks(u, eligible)
        m_part = percentile_ranks(m, with_roi)
    fused = weight * u_part + (1.0 - weight) * m_part
    score = torch.where(unknown_roi, u_part, fused)
    score = torch.where(excluded, float("nan"), score)
    score = torch.where(bad, float("-inf"), score)
    warn_nonfinite(int(bad.sum()), "uncertainty or CAM inputs")
    return DualScore(score=score, invalid=bad, excluded=excluded)


def percentile_ranks(values: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """Mid-rank percentiles ``(rank + 0.5) / n`` in ``(0, 1)`` of ``values`` over the items ``among``.

    Ties share the average of their ranks, so equal values get equal scores; items outside
    ``among`` get NaN.
    """
    out = torch.full_like(values, float("nan"))
    chosen = values[among]
    n = chosen.numel()
    if n == 0:
        return out
    distinct, inverse, counts = torch.unique(chosen, sorted=True, return_inverse=True, return_counts=True)
    first_rank = torch.cumsum(counts, 0) - counts
    mean_rank = first_rank.to(torch.float64) + (counts.to(torch.float64) - 1.0) / 2.0
    out[among] = (mean_rank[inverse] + 0.5) / n
    return out


def check_score_pair(uncertainty: torch.Tensor, misalignment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the two ``[B]`` criteria (``ValueError`` naming the argument); both as float64."""
    for value, name in ((uncertainty, "uncertainty"), (misalignment, "misalignment")):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor [B], got {type(value).__name__}")
        if value.dim() != 1:
            raise ValueError(f"{name}: expected shape [B], got {tuple(value.shape)}")
        if not value.dtype.is_floating_point:
            raise ValueError(f"{name}: expected a floating dtype, got {value.dtype}")
    if uncertainty.shape != misalignment.shape:
        raise ValueError(
            f"misalignment: holds {misalignment.shape[0]} items, uncertainty holds {uncertainty.shape[0]}"
        )
    return uncertainty.to(torch.float64), misalignment.to(device=uncertainty.device, dtype=torch.float64)
