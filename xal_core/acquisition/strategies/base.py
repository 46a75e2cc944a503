"""What every acquisition strategy shares: the score → selection template and the checks.

A strategy implements one method, ``_score`` (a float per pool item, NaN = not selectable).
Everything cross-cutting happens here, once: the table and ``k`` are checked, invalid and NaN items
become ``-inf`` (never selected), and the default selection is the deterministic top-``k``:
descending score, ties by ascending id (``xal_core.scoring.rank_order``, the rule of docs/contract.md
and of the service's ``TopK``). Stochastic strategies and diversity modes override ``_order``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from xal_core.scoring import rank_order

from .table import ScoreTable

__all__ = ["Acquisition", "Strategy", "check_positive", "ranked_positions", "require_rng"]

@dataclass(frozen=True, eq=False)
class Acquisition:
    """The items a strategy acquires, in acquisition order.

    Attributes:
        ids: int64 ``[k']``, ``k' = min(k, selectable items)``; the first is acquired first.
        scores: float64 ``[k']``, each item's score under the strategy (0 for ``random``).
        strategy: the strategy's label (``"dual"``, ``"entropy+power"``, ...).
    """

    ids: np.ndarray
    scores: np.ndarray
    strategy: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class Strategy(ABC):
    """An acquisition function over a :class:`ScoreTable`.

    Subclasses set ``name`` and implement ``_score``; the public ``scores`` and ``select`` are the
    same for all of them.
    """

    name: ClassVar[str]
    #: whether the strategy ranks by the CAM–ROI Dice, so needs the pool's ROIs to mean anything
    reads_rois: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """The name recorded with an acquisition (a diversity wrapper adds its mode)."""
        return self.name

    def scores(self, table: ScoreTable) -> np.ndarray:
        """float64 ``[N]``: higher = acquire first; ``-inf`` = never (invalid or excluded items)."""
        if not isinstance(table, ScoreTable):
            raise ValueError(f"{self.label}: expected a ScoreTable, got {type(table).__name__}")
        raw = np.asarray(self._score(table), dtype=np.float64)
        if raw.shape != (len(table),):
            raise RuntimeError(f"{self.label}: _score returned shape {raw.shape}, expected ({len(table)},)")
        return np.where(np.isnan(raw) | table.invalid_mask, -np.inf, raw)

    def select(self, table: ScoreTable, k: int, rng: np.random.Generator | None = None) -> Acquisition:
        """Acquire up to ``k`` items.

        Args:
            table: the unlabeled pool at this round.
            k: how many items to acquire, ``>= 1``; fewer come back when fewer are selectable.
            rng: the source of randomness of stochastic strategies (``random``, ``power``,
                ``softrank``); deterministic ones ignore it.

        Raises:
            ValueError: ``k < 1`` or not an integer; a stochastic strategy without ``rng``.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
        scores = self.scores(table)
        positions = np.asarray(self._order(table, scores, int(k), rng), dtype=np.int64)[: int(k)]
        return Acquisition(ids=table.ids[positions].copy(), scores=scores[positions].copy(), strategy=self.label)

    @abstractmethod
    def _score(self, table: ScoreTable) -> np.ndarray:
        """float ``[N]``, higher = acquire first; NaN = this item may not be selected."""

    def _order(self, table: ScoreTable, scores: np.ndarray, k: int, rng: np.random.Generator | None) -> np.ndarray:
        """Row positions of the acquired items, in acquisition order (at most ``k``)."""
        return ranked_positions(table.ids, scores)[:k]


def ranked_positions(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions of the selectable items (score > -inf), by descending score then ascending id."""
    selectable = np.flatnonzero(scores > -np.inf)
    order = rank_order(torch.from_numpy(ids[selectable]), torch.from_numpy(scores[selectable])).numpy()
    return selectable[order]


def require_rng(rng: np.random.Generator | None, who: str) -> np.random.Generator:
    if rng is None:
        raise ValueError(f"{who}: is stochastic; pass rng=np.random.default_rng(seed) to select()")
    return rng


def check_positive(value: Any, name: str, *, minimum: float = 0.0, allow_inf: bool = False) -> float:
    """A number ``>= minimum`` (``math.inf`` only with ``allow_inf``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < minimum:
        raise ValueError(f"{name}: expected a number >= {minimum}, got {value!r}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)
