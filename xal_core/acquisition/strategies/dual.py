"""Strategies that use the explanations: misalignment alone and the dual score (docs/contract.md).

All three call ``xal_core.scoring.dual_score`` on the whole table, so their numbers are the ones
the scoring service ranks by. Items whose ROI is unknown follow the ``missing_roi`` policy:

* ``"uncertainty_only"`` (default): scored by their uncertainty ``U`` alone;
* ``"exclude"``: never selected.

When no selectable item of the table has a known ROI at all (a data set shipped without
annotations, a wrong ROI column), a :class:`NoRoiWarning` says so once per strategy object, and the
policy applies to every item. It is a Python warning, not a log line, for the same reasons as the
scoring module's ``NonFiniteInputWarning``: it is about the data, a caller can turn it into an error
(``-W error::xal_core.acquisition.strategies.NoRoiWarning``) or route it to logging
(``logging.captureWarnings``), and tests can assert it.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch

from xal_core.scoring import NonFiniteInputWarning, dual_score
from xal_core.scoring.parameters import (
    DEFAULT_MISSING_ROI,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
    MISSING_ROI_POLICIES,
    check_choice,
    check_missing_roi,
    check_weight,
)

from .base import Strategy
from .measures import MEASURES, uncertainty_column
from .registry import register_strategy
from .table import ScoreTable

__all__ = ["DualRank", "DualWeighted", "MISSING_ROI_POLICIES", "Misalignment", "NoRoiWarning"]


class NoRoiWarning(UserWarning):
    """No selectable item of the pool has a known ROI: the missing-ROI policy decides for all."""


class _ExplanationStrategy(Strategy):
    """Shared parameters and the one call to ``dual_score``."""

    method: ClassVar[str] = "weighted"
    reads_rois: ClassVar[bool] = True

    def __init__(self, *, weight: float, uncertainty: str = DEFAULT_UNCERTAINTY,
                 missing_roi: str = DEFAULT_MISSING_ROI) -> None:
        self.weight = check_weight(weight)
        self.uncertainty = check_choice(uncertainty, MEASURES, "uncertainty")  # the contract's kinds, or bald
        self.missing_roi = check_missing_roi(missing_roi)
        self._warned_no_roi = False

    def _score(self, table: ScoreTable) -> np.ndarray:
        u = uncertainty_column(table, self.uncertainty)
        self._check_roi_coverage(table, u)
        with warnings.catch_warnings():  # the invalid flags are known; non-finite U was reported above
            warnings.simplefilter("ignore", NonFiniteInputWarning)
            fused = dual_score(
                torch.from_numpy(u),
                torch.from_numpy(1.0 - table.dice),
                weight=self.weight,
                method=self.method,  # type: ignore[arg-type]
                missing_roi=self.missing_roi,  # type: ignore[arg-type]
                invalid=torch.from_numpy(table.invalid_mask),
            )
        return fused.score.numpy()  # NaN (excluded) and -inf (invalid) both become "never"

    def _check_roi_coverage(self, table: ScoreTable, u: np.ndarray) -> None:
        candidates = ~table.invalid_mask & np.isfinite(u)
        if self._warned_no_roi or not candidates.any() or table.known_roi[candidates].any():
            return
        self._warned_no_roi = True
        if self.missing_roi == "uncertainty_only":
            consequence = (
                f"falling back to missing_roi='uncertainty_only': every item is scored by its "
                f"{self.uncertainty} uncertainty alone, so this round is plain uncertainty sampling"
            )
        else:
            consequence = (
                "missing_roi='exclude' excludes every item: nothing is acquired until ROIs are supplied "
                "(missing_roi='uncertainty_only' would rank them by uncertainty instead)"
            )
        warnings.warn(
            f"{self.name}: none of the {int(candidates.sum())} selectable items has a known ROI "
            f"(dice is NaN for all of them); {consequence}",
            NoRoiWarning,
            stacklevel=4,
        )


@register_strategy
class Misalignment(_ExplanationStrategy):
    """Attention misalignment ``M = 1 − Dice(CAM ≥ τ, ROI)``: images the model looks at wrongly first.

    Equal to the weighted dual score with ``λ = 0``; items without a known ROI follow
    ``missing_roi``.

    Args:
        uncertainty: the measure used for items without an ROI (``"entropy"``, ``"margin"``,
            ``"least_confidence"``, ``"bald"``).
        missing_roi: ``"uncertainty_only"`` or ``"exclude"``.

    References:
        Selvaraju et al., *Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
        Localization*, ICCV 2017: https://arxiv.org/abs/1610.02391; the misalignment is
        xal's contract, docs/contract.md.
    """

    name: ClassVar[str] = "misalignment"

    def __init__(self, *, uncertainty: str = DEFAULT_UNCERTAINTY, missing_roi: str = DEFAULT_MISSING_ROI) -> None:
        super().__init__(weight=0.0, uncertainty=uncertainty, missing_roi=missing_roi)


@register_strategy
class DualWeighted(_ExplanationStrategy):
    """The dual score ``s = λ·U + (1 − λ)·M``: uncertain *and* misattending images first.

    Args:
        weight: ``λ`` in ``[0, 1]``; 1 is uncertainty sampling, 0 misalignment only.
        uncertainty: the measure ``U``.
        missing_roi: ``"uncertainty_only"`` or ``"exclude"``.

    References:
        xal's scoring contract, docs/contract.md; uncertainty as in Settles 2009
        (https://burrsettles.com/pub/settles.activelearning.pdf), misalignment from Grad-CAM
        (https://arxiv.org/abs/1610.02391).
    """

    name: ClassVar[str] = "dual"

    def __init__(self, *, weight: float = DEFAULT_WEIGHT, uncertainty: str = DEFAULT_UNCERTAINTY,
                 missing_roi: str = DEFAULT_MISSING_ROI) -> None:
        super().__init__(weight=weight, uncertainty=uncertainty, missing_roi=missing_roi)


@register_strategy
class DualRank(_ExplanationStrategy):
    """Rank fusion: ``λ·rank%(U) + (1 − λ)·rank%(M)`` with mid-rank percentiles over the pool.

    Robust when ``U`` and ``M`` live on different scales (entropy near 0 for a confident model while
    misalignment spans [0, 1]): each criterion contributes its ordering, not its magnitude. Ties share
    their average rank; items without an ROI get their ``U`` percentile (``"uncertainty_only"``).

    Args:
        weight: ``λ``; the default (0.5) is the plain mean of the two percentile ranks.
        uncertainty: the measure ``U``.
        missing_roi: ``"uncertainty_only"`` or ``"exclude"``.

    References:
        Borda-style rank aggregation: Dwork et al., *Rank Aggregation Methods for the Web*,
        WWW 2001: https://doi.org/10.1145/371920.372165; xal's contract, docs/contract.md.
    """

    name: ClassVar[str] = "dual_rank"
    method: ClassVar[str] = "rank"

    def __init__(self, *, weight: float = DEFAULT_WEIGHT, uncertainty: str = DEFAULT_UNCERTAINTY,
                 missing_roi: str = DEFAULT_MISSING_ROI) -> None:
        super().__init__(weight=weight, uncertainty=uncertainty, missing_roi=missing_roi)
