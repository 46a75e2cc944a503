"""Batch diversity for any strategy: the top-k of one score tends to pick near-duplicates.

Images that are uncertain or misattended for the same reason (one scanner, one artefact, adjacent
slices of one volume) score alike, so a deterministic top-k spends the labelling budget on copies.
Two remedies, both wrapping any base strategy:

* ``"power"`` / ``"softrank"``: stochastic batch acquisition. Sample ``k`` items without replacement
  with probability ∝ ``score^β`` (power) or ∝ ``rank^−β`` (softrank), by the Gumbel-top-k trick.
  Costs one pass over the pool; needs nothing but the scores.
* ``"kcenter"``: greedy k-center over the pooled features of the best ``candidate_factor·k`` items by
  the base score: first the best item, then repeatedly the candidate farthest from everything chosen.
  Needs ``table.embeddings``.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import numpy as np

from .base import Strategy, check_positive, ranked_positions, require_rng
from .table import ScoreTable

__all__ = ["DIVERSITY_MODES", "Diverse"]

DIVERSITY_MODES: tuple[str, ...] = ("power", "softrank", "kcenter")


class Diverse(Strategy):
    """A base strategy with a batch-diversity mode (see the module docstring).

    Args:
        base: the strategy whose scores are diversified (its ``scores`` are reported).
        mode: ``"power"``, ``"softrank"`` or ``"kcenter"``.
        beta: the sharpness of ``power`` and ``softrank``, ``>= 0``: 0 is uniform random sampling,
            ``math.inf`` is exactly the base's deterministic top-k. Power sampling needs
            non-negative scores (every xal score lies in [0, 1]); zero-score items come after all
            positive ones, in random order.
        candidate_factor: ``kcenter`` chooses among the best ``ceil(candidate_factor·k)`` items by
            the base score (``>= 1``; 1 gives the base's top-k). Restricting to informative
            candidates first keeps the batch informative; k-center over the whole pool would favour
            outliers regardless of their score. Items whose embedding has NaN/Inf are skipped.

    ``power`` and ``softrank`` need ``rng`` in ``select``; ``kcenter`` is deterministic (ties in
    distance go to the better-ranked candidate).

    References:
        Kirsch et al., *Stochastic Batch Acquisition: A Simple Baseline for Deep Active Learning*,
        TMLR 2023: https://arxiv.org/abs/2106.12059 (power, softrank); Kool, van Hoof and Welling,
        *Stochastic Beams and Where to Find Them*, ICML 2019: https://arxiv.org/abs/1903.06059
        (Gumbel-top-k); Sener and Savarese, *Active Learning for Convolutional Neural Networks:
        A Core-Set Approach*, ICLR 2018: https://arxiv.org/abs/1708.00489 (k-center greedy);
        Zhdanov, *Diverse mini-batch Active Learning*, 2019: https://arxiv.org/abs/1901.05954
        (pre-filtering by informativeness before diversifying).
    """

    name: ClassVar[str] = "diverse"

    def __init__(self, base: Strategy, mode: str = "power", *, beta: float = 1.0, candidate_factor: float = 10.0) -> None:
        if not isinstance(base, Strategy):
            raise ValueError(f"base: expected a Strategy, got {type(base).__name__}")
        if isinstance(base, Diverse):
            raise ValueError(f"base: {base.label} already has a diversity mode")
        if mode not in DIVERSITY_MODES:
            raise ValueError(f"diversity: expected one of {', '.join(DIVERSITY_MODES)}, got {mode!r}")
        self.base = base
        self.mode = mode
        self.beta = check_positive(beta, "beta", allow_inf=True)
        self.candidate_factor = check_positive(candidate_factor, "candidate_factor", minimum=1.0)

    @property
    def label(self) -> str:
        return f"{self.base.label}+{self.mode}"

    def _score(self, table: ScoreTable) -> np.ndarray:
        return self.base.scores(table)

    def _order(self, table: ScoreTable, scores: np.ndarray, k: int, rng: np.random.Generator | None) -> np.ndarray:
        if self.mode == "kcenter":
            return self._kcenter(table, scores, k)
        if math.isinf(self.beta):
            return ranked_positions(table.ids, scores)[:k]
        return self._gumbel_top_k(table, scores, k, require_rng(rng, self.label))

    def _gumbel_top_k(self, table: ScoreTable, scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """Sample without replacement ∝ ``exp(log-weight)``: the ``k`` largest ``log-weight + Gumbel``."""
        selectable = np.flatnonzero(scores > -np.inf)
        selectable = selectable[np.argsort(table.ids[selectable], kind="stable")]  # row order does not matter
        values = scores[selectable]
        if self.mode == "power":
            if (values < 0).any():
                raise ValueError(f"{self.label}: power sampling needs scores >= 0, got {float(values.min())!r}")
            with np.errstate(divide="ignore"):
                log_weight = np.where(values > 0, self.beta * np.log(values), -np.inf) if self.beta else np.zeros(values.size)
        else:
            rank_of_row = np.empty(len(table))
            rank_of_row[ranked_positions(table.ids, scores)] = np.arange(1, values.size + 1)
            rank = rank_of_row[selectable]  # 1 = the best item
            log_weight = -self.beta * np.log(rank)
        keys = log_weight + rng.gumbel(size=values.size)
        zero_weight = np.isneginf(log_weight)
        tie_break = rng.permutation(values.size)  # zero-weight items: uniform order after the others
        order = np.lexsort((tie_break, -np.where(zero_weight, 0.0, keys), zero_weight))
        return selectable[order[:k]]

    def _kcenter(self, table: ScoreTable, scores: np.ndarray, k: int) -> np.ndarray:
        if table.embeddings is None:
            raise ValueError(
                f"{self.label}: k-center needs table.embeddings [N, D] (pooled features of the pool items); "
                "pass them, or use diversity='power' which needs only the scores"
            )
        ranked = ranked_positions(table.ids, scores)
        candidates = ranked[: math.ceil(self.candidate_factor * k)]
        finite = np.isfinite(table.embeddings[candidates]).all(axis=1)
        if not finite.all():
            warnings.warn(
                f"{self.label}: {int((~finite).sum())} candidate(s) have NaN/Inf embeddings and are skipped",
                UserWarning,
                stacklevel=4,
            )
            candidates = candidates[finite]
        if candidates.size == 0:
            return candidates
        points = table.embeddings[candidates]
        chosen = [0]  # the best candidate by the base score
        distance = np.linalg.norm(points - points[0], axis=1)
        available = np.ones(candidates.size, dtype=bool)
        available[0] = False
        while len(chosen) < min(k, candidates.size):
            # argmax takes the first maximum: among equally far candidates, the better ranked one
            farthest = int(np.argmax(np.where(available, distance, -1.0)))
            chosen.append(farthest)
            available[farthest] = False
            distance = np.minimum(distance, np.linalg.norm(points - points[farthest], axis=1))
        return candidates[np.asarray(chosen)]
