"""Uncertainty of the pool items from a score table, through ``xal_core.scoring`` (one definition).

The scoring functions take logits; ``log p`` is a valid logit vector of the distribution ``p``
(``softmax(log p) = p``). A zero probability has no finite log, so it is floored at the smallest
normal float64 (``log`` ≈ −708): ``softmax`` gives it back as ≈ 1e−308, which changes no measure
by more than that. Rows flagged ``invalid`` are replaced by the uniform distribution before the
call (their score is discarded anyway), so only rows that are *unexpectedly* non-finite raise the
scoring module's ``NonFiniteInputWarning``.
"""

from __future__ import annotations

import numpy as np
import torch

from xal_core.scoring import UNCERTAINTY_KINDS, bald, uncertainty

from .table import ScoreTable

__all__ = ["MEASURES", "uncertainty_column"]

MEASURES: tuple[str, ...] = (*UNCERTAINTY_KINDS, "bald")

_FLOOR = np.finfo(np.float64).tiny


def uncertainty_column(table: ScoreTable, kind: str) -> np.ndarray:
    """float64 ``[N]`` in ``[0, 1]`` (NaN for rows with non-finite probabilities).

    Args:
        table: the pool.
        kind: ``"entropy"``, ``"margin"``, ``"least_confidence"`` (from ``table.probabilities``) or
            ``"bald"`` (from ``table.mc_probabilities``).

    Raises:
        ValueError: unknown ``kind``, or ``"bald"`` on a table without ``mc_probabilities``.
    """
    if kind not in MEASURES:
        raise ValueError(f"uncertainty: expected one of {', '.join(MEASURES)}, got {kind!r}")
    if len(table) == 0:
        return np.zeros(0, dtype=np.float64)
    invalid = table.invalid_mask
    if kind == "bald":
        if table.mc_probabilities is None:
            raise ValueError(
                "bald: the score table has no mc_probabilities [T, N, K]; run T stochastic passes "
                "(MC dropout) and pass them, or use an uncertainty that needs one pass ('entropy')"
            )
        passes = np.where(invalid[None, :, None], 1.0 / table.probabilities.shape[1], table.mc_probabilities)
        return bald(_as_logits(passes)).double().numpy()
    rows = np.where(invalid[:, None], 1.0 / table.probabilities.shape[1], table.probabilities)
    return uncertainty(_as_logits(rows), kind).double().numpy()  # type: ignore[arg-type]


def _as_logits(probabilities: np.ndarray) -> torch.Tensor:
    with np.errstate(invalid="ignore"):  # NaN rows stay NaN and are reported by the scoring module
        return torch.from_numpy(np.log(np.maximum(probabilities, _FLOOR)))
