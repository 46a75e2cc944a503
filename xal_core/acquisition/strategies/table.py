"""The score table: what every acquisition strategy reads about the unlabeled pool at one round.

One row per pool item, one NumPy column per quantity. A table is validated once, when it is built,
so the strategies can trust its shapes and ranges; bad *values* of one item (a corrupt image) are
not an error of the table: they are the ``invalid`` flag, and such items are never selected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xal_core.acquisition.batch_scoring import BatchScores

__all__ = ["ScoreTable"]

# Rows of probabilities must sum to 1 within this (float32 softmax outputs sum to 1 ± ~1e-6).
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class ScoreTable:
    """Per-item columns over the unlabeled pool at one round (NumPy, all length ``N``).

    Columns are converted on construction (lists, NumPy arrays and CPU torch tensors are accepted)
    and checked; a structural problem raises ``ValueError`` naming the column and the problem.

    Attributes:
        ids: int64 ``[N]``, unique item ids.
        probabilities: float64 ``[N, K]``, ``K >= 2``, predictive probabilities (the mean over MC
            passes if there are any). Rows of finite values must be distributions (``[0, 1]``,
            summing to 1), which catches logits passed by mistake; a row with NaN/Inf makes its
            item unselectable.
        dice: float64 ``[N]``, the thresholded CAM–ROI Dice in ``[0, 1]``; NaN where the ROI is
            unknown (or the item is invalid).
        soft_dice: float64 ``[N]`` in ``[0, 1]``, NaN where unknown; optional.
        invalid: bool ``[N]``, items whose inputs were bad: never selected; optional.
        mc_probabilities: float64 ``[T, N, K]``, the ``T`` stochastic (MC-dropout) passes, for BALD;
            optional.
        embeddings: float64 ``[N, D]`` pooled features, for k-center diversity; optional.
    """

    ids: np.ndarray
    probabilities: np.ndarray
    dice: np.ndarray
    soft_dice: np.ndarray | None = None
    invalid: np.ndarray | None = None
    mc_probabilities: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = _as_array(self.ids, "ids")
        if ids.ndim != 1:
            raise ValueError(f"ScoreTable.ids: expected shape [N], got {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ScoreTable.ids: expected integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        distinct, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ScoreTable.ids: id {int(distinct[counts > 1][0])} appears more than once")
        n = ids.shape[0]
        object.__setattr__(self, "ids", ids)

        probabilities = _float_column(self.probabilities, "probabilities", (n, None), f"[N, K] with N = {n}")
        if probabilities.shape[1] < 2:
            raise ValueError(f"ScoreTable.probabilities: needs K >= 2 classes, got K = {probabilities.shape[1]}")
        _check_distributions(probabilities, ids, "probabilities")
        object.__setattr__(self, "probabilities", probabilities)

        for name in ("dice", "soft_dice"):
            value = getattr(self, name)
            if value is None and name == "soft_dice":
                continue
            column = _float_column(value, name, (n,), f"[{n}]")
            outside = ~np.isnan(column) & ~((column >= 0.0) & (column <= 1.0))
            if outside.any():
                first = int(np.flatnonzero(outside)[0])
                raise ValueError(
                    f"ScoreTable.{name}: expected values in [0, 1] or NaN (unknown ROI), "
                    f"got {float(column[first])} for id {int(ids[first])}"
                )
            object.__setattr__(self, name, column)

        if self.invalid is not None:
            invalid = _as_array(self.invalid, "invalid")
            if invalid.shape != (n,):
                raise ValueError(f"ScoreTable.invalid: expected shape [{n}], got {invalid.shape}")
            if invalid.dtype != np.bool_:
                raise ValueError(f"ScoreTable.invalid: expected a bool column, got dtype {invalid.dtype}")
            object.__setattr__(self, "invalid", invalid)

        if self.mc_probabilities is not None:
            classes = probabilities.shape[1]
            mc = _float_column(self.mc_probabilities, "mc_probabilities", (None, n, classes), f"[T, {n}, {classes}] (T passes, N, K)")
            if mc.shape[0] < 1:
                raise ValueError("ScoreTable.mc_probabilities: needs at least one stochastic pass, got T = 0")
            _check_distributions(mc.reshape(-1, classes), np.tile(ids, mc.shape[0]), "mc_probabilities")
            object.__setattr__(self, "mc_probabilities", mc)

        if self.embeddings is not None:
            embeddings = _float_column(self.embeddings, "embeddings", (n, None), f"[N, D] with N = {n}")
            if embeddings.shape[1] < 1:
                raise ValueError("ScoreTable.embeddings: needs D >= 1 features per item, got D = 0")
            object.__setattr__(self, "embeddings", embeddings)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def invalid_mask(self) -> np.ndarray:
        """bool ``[N]``: the ``invalid`` column, all False when it was not given."""
        return self.invalid if self.invalid is not None else np.zeros(len(self), dtype=bool)

    @property
    def known_roi(self) -> np.ndarray:
        """bool ``[N]``: items with a known ROI (a finite Dice) that are not invalid."""
        return ~np.isnan(self.dice) & ~self.invalid_mask

    @classmethod
    def from_batch_scores(
        cls,
        batches: BatchScores | Iterable[BatchScores],
        *,
        mc_probabilities: Any = None,
        embeddings: Any = None,
    ) -> ScoreTable:
        """Build a table from the output of ``score_batch`` (one batch or the pool's batches).

        ``ids``, ``probabilities``, ``dice``, ``soft_dice`` and ``invalid`` come from the batches,
        concatenated in order; ``mc_probabilities`` and ``embeddings`` (which ``score_batch`` does
        not produce) may be given in the same row order.
        """
        parts = [batches] if isinstance(batches, BatchScores) else list(batches)
        if not parts:
            raise ValueError("from_batch_scores: got no batches")
        for part in parts:
            if not isinstance(part, BatchScores):
                raise ValueError(f"from_batch_scores: expected BatchScores, got {type(part).__name__}")

        def column(name: str) -> np.ndarray:
            return np.concatenate([getattr(part, name).detach().cpu().numpy() for part in parts])

        return cls(
            ids=column("ids"),
            probabilities=column("probabilities"),
            dice=column("dice"),
            soft_dice=column("soft_dice"),
            invalid=column("invalid").astype(bool),
            mc_probabilities=mc_probabilities,
            embeddings=embeddings,
        )


def _as_array(value: Any, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"ScoreTable.{name}: is required")
    if hasattr(value, "detach"):  # a torch tensor (CPU): no torch import needed here
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"ScoreTable.{name}: cannot be read as an array ({error})") from None


def _float_column(value: Any, name: str, shape: tuple[int | None, ...], layout: str) -> np.ndarray:
    """The column as float64, checked against ``shape`` (None = any size on that axis)."""
    array = _as_array(value, name)
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape, strict=True)):
        raise ValueError(f"ScoreTable.{name}: expected shape {layout}, got {array.shape}")
    if array.size and not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"ScoreTable.{name}: expected numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _check_distributions(rows: np.ndarray, ids: np.ndarray, name: str) -> None:
    """Finite rows must be probability distributions; non-finite rows are left to the strategies."""
    finite = np.isfinite(rows).all(axis=1)
    good = rows[finite]
    bad_value = ((good < 0.0) | (good > 1.0)).any(axis=1)
    bad_sum = np.abs(good.sum(axis=1) - 1.0) > _SUM_TOLERANCE
    wrong = bad_value | bad_sum
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        row_id = int(ids[np.flatnonzero(finite)[first]])
        raise ValueError(
            f"ScoreTable.{name}: the row of id {row_id} is not a probability distribution "
            f"(values {good[first].tolist()}, sum {good[first].sum():.6g}); pass softmax outputs, not logits"
        )
