"""Exact streaming top-k over a pool that never fits in memory at once.

The ranking must be reproducible: equal scores are ordered by ascending item id, so the result is
identical to a stable sort of the whole pool by ``(-score, id)``. Scores that are NaN mean
"not eligible" (see ``fusion``) and are never selected; ``-inf`` ranks last but is selectable.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Selection", "TopK", "rank_order"]


class Selection(NamedTuple):
    """The selected items, best first: ``ids`` int64 ``[n]`` and ``scores`` float64 ``[n]``."""

    ids: torch.Tensor
    scores: torch.Tensor


def rank_order(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by descending score, then ascending id (NaN scores must be removed)."""
    by_id = torch.argsort(ids, stable=True)
    by_score = torch.argsort(scores[by_id], descending=True, stable=True)
    return by_id[by_score]


class TopK:
    """Keeps the best ``k`` items seen so far; memory ``O(k + chunk)``.

    Example:
        >>> import torch
        >>> top = TopK(2)
        >>> top.push(torch.tensor([7, 3]), torch.tensor([0.5, 0.9]))
        >>> top.push(torch.tensor([1, 4]), torch.tensor([0.5, 0.1]))
        >>> top.result().ids.tolist()
        [3, 1]
    """

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        self.k = int(k)
        self._ids = torch.empty(0, dtype=torch.int64)
        self._scores = torch.empty(0, dtype=torch.float64)
        self._columns: dict[str, torch.Tensor] = {}
        self.n_seen = 0
        self.n_ineligible = 0

    def push(
        self,
        ids: torch.Tensor | np.ndarray,
        scores: torch.Tensor | np.ndarray,
        columns: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Offer one chunk.

        Args:
            ids: unique integers (checked within the chunk and against the current selection;
                uniqueness across the whole pool is the caller's contract).
            scores: one per id; NaN = not eligible.
            columns: optional per-item values to carry along with the selected items (for example
                the metrics a ranking reports); the same names on every push.
        """
        ids_t = torch.as_tensor(ids).detach().cpu()
        scores_t = torch.as_tensor(scores).detach().cpu()
        if ids_t.dim() != 1 or scores_t.shape != ids_t.shape:
            raise ValueError(f"push: ids {tuple(ids_t.shape)} and scores {tuple(scores_t.shape)} must be matching 1-D tensors")
        if ids_t.dtype.is_floating_point or ids_t.dtype == torch.bool:
            raise ValueError(f"push: ids must be integers, got {ids_t.dtype}")
        if not scores_t.dtype.is_floating_point:
            scores_t = scores_t.to(torch.float64)
        ids_t = ids_t.to(torch.int64)
        scores_t = scores_t.to(torch.float64)
        self.n_seen += int(ids_t.numel())
        eligible = ~torch.isnan(scores_t)
        self.n_ineligible += int((~eligible).sum())
        chunk_columns = self._check_columns(columns, ids_t.shape[0])
        keep = eligible
        ids_t = ids_t[keep]
        self._check_unique(ids_t)
        if ids_t.numel() > self.k:
            # Keep everything that can still make the cut, ties at the k-th score included.
            kth = torch.topk(scores_t[keep], self.k).values[-1]
            keep = keep & (scores_t >= kth)
            ids_t = torch.as_tensor(ids).detach().cpu().to(torch.int64)[keep]
        scores_t = scores_t[keep]
        merged_ids = torch.cat([self._ids, ids_t])
        merged_scores = torch.cat([self._scores, scores_t])
        order = rank_order(merged_ids, merged_scores)[: self.k]
        self._ids, self._scores = merged_ids[order], merged_scores[order]
        self._columns = {
            name: torch.cat([self._columns[name], value[keep]])[order] if name in self._columns else value[keep][order]
            for name, value in chunk_columns.items()
        }

    def result(self) -> Selection:
        """The best ``min(k, eligible items seen)`` items, best first."""
        return Selection(self._ids.clone(), self._scores.clone())

    def selected_columns(self) -> dict[str, torch.Tensor]:
        """The ``columns`` passed to :meth:`push`, aligned with ``result().ids``."""
        return {name: value.clone() for name, value in self._columns.items()}

    def __len__(self) -> int:
        return int(self._ids.numel())

    def _check_unique(self, ids: torch.Tensor) -> None:
        distinct, counts = torch.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"push: id {int(distinct[counts > 1][0])} appears more than once in the chunk")
        again = torch.isin(ids, self._ids)
        if again.any():
            raise ValueError(f"push: id {int(ids[again][0])} was already pushed")

    def _check_columns(self, columns: dict[str, torch.Tensor] | None, n: int) -> dict[str, torch.Tensor]:
        if not columns:
            if self._columns and self.n_seen > n:
                raise ValueError(f"push: columns {sorted(self._columns)} were given before; give them on every push")
            return {}
        if self.n_seen > n and set(columns) != set(self._columns):
            raise ValueError(f"push: columns {sorted(columns)} differ from earlier pushes {sorted(self._columns)}")
        checked = {}
        for name, value in columns.items():
            value = torch.as_tensor(value).detach().cpu()
            if value.dim() < 1 or value.shape[0] != n:
                raise ValueError(f"push: column {name!r} has shape {tuple(value.shape)}, expected [{n}, ...]")
            checked[name] = value
        return checked
