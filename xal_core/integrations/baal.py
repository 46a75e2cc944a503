"""xal strategies as a baal heuristic, for loops built on baal's ``ActiveLearningLoop``.

baal hands a heuristic the pool's predictions only. The CAM–ROI Dice comes from the caller, in one
of three forms given as ``dice``:

* a callable ``dice() -> [n_pool]``, called at every ranking: the natural choice, since the Dice
  depends on the current model (compute it with ``xal_core.acquisition.score_batch`` over the
  pool, in baal's pool order);
* an array over the whole data set, with ``dataset=`` the ``ActiveLearningDataset``: the heuristic
  picks the unlabelled items' entries (baal's pool order is the data set order of the unlabelled
  items), so one array serves every round;
* an array aligned with the predictions.

NaN marks an unknown ROI (the strategy's ``missing_roi`` policy applies); ``dice=None`` means no ROI
anywhere. ``embeddings`` (for ``diversity="kcenter"``) takes the same three forms.

Requires the optional extra ``baal`` (``pip install 'xal-ml[baal]'``). baal 2.1 lists Jupyter as a
hard dependency; the heuristics themselves need only ``torchmetrics`` and ``structlog`` besides
NumPy, SciPy and torch, so ``pip install --no-deps baal structlog torchmetrics lightning-utilities``
also works where the Jupyter stack is unwanted.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np

from xal_core.acquisition.strategies import Diverse, Random, ScoreTable, Strategy, make_strategy

try:
    from baal.active.heuristics import AbstractHeuristic
    from baal.utils.array_utils import to_prob

    _BAAL_MISSING: ImportError | None = None
except ImportError as error:  # keep this module importable (doctest collection) without baal
    AbstractHeuristic = object  # type: ignore[assignment,misc]
    _BAAL_MISSING = error

__all__ = ["XalHeuristic"]

ColumnSource = np.ndarray | Callable[[], Any] | None


class XalHeuristic(AbstractHeuristic):  # type: ignore[misc,valid-type]
    """A baal heuristic that ranks the pool with an xal strategy (by default the dual score).

    Predictions arrive as baal produces them: ``[n, K]`` probabilities or logits, or
    ``[n, K, T]`` for ``T`` MC-dropout iterations (the mean over ``T`` is the predictive
    distribution and the passes feed ``"bald"``), as one array or a generator of chunks. Logits are
    turned into probabilities by baal's own ``to_prob``. Outputs with more axes (segmentation) are
    refused: xal scores one label per image.

    ``get_ranks`` returns pool indices in acquisition order and the strategy's score of every pool
    item (``-inf`` for items that may never be selected). Only selectable items are ranked: invalid
    items and those excluded by ``missing_roi="exclude"`` are left out, so the ranking can be
    shorter than the pool, as with baal's own stochastic heuristics. With a diversity mode or
    ``"random"``, the first ``query_size`` indices are the strategy's batch and the rest follow by
    score.

    Args:
        strategy: a name from ``STRATEGY_NAMES`` or a ``Strategy`` object.
        dice: the CAM–ROI Dice (see the module docstring); None = no ROI known.
        embeddings: pooled features ``[n, D]`` for ``diversity="kcenter"``, same forms as ``dice``.
        dataset: baal's ``ActiveLearningDataset`` when ``dice``/``embeddings`` are arrays over the
            whole data set.
        query_size: the batch size of baal's loop; required by stochastic strategies and diversity
            modes, whose batch is not a prefix of a fixed ranking.
        seed: seeds the generator of stochastic strategies (one generator for the heuristic's life).
        **params: the strategy's parameters (``weight``, ``uncertainty``, ``missing_roi``,
            ``diversity``, ``beta``, ``candidate_factor``).

    Example:
        ``ActiveLearningLoop(al_dataset, model.predict_on_dataset,
        heuristic=XalHeuristic("dual", dice=pool_dice, query_size=16), query_size=16, iterations=20)``
    """

    def __init__(
        self,
        strategy: str | Strategy = "dual",
        *,
        dice: ColumnSource = None,
        embeddings: ColumnSource = None,
        dataset: Any = None,
        query_size: int | None = None,
        seed: int | None = None,
        **params: Any,
    ) -> None:
        if _BAAL_MISSING is not None:
            raise ImportError("xal_core.integrations.baal needs baal: pip install 'xal-ml[baal]'") from _BAAL_MISSING
        super().__init__(reverse=True)
        if isinstance(strategy, Strategy):
            if params:
                raise ValueError(f"params {sorted(params)} apply to a strategy name, not to a Strategy object")
            self.strategy = strategy
        else:
            self.strategy = make_strategy(strategy, **params)
        stochastic = isinstance(self.strategy, (Random, Diverse))
        if query_size is not None and (isinstance(query_size, bool) or not isinstance(query_size, int) or query_size < 1):
            raise ValueError(f"query_size: expected a positive integer, got {query_size!r}")
        if stochastic and query_size is None:
            raise ValueError(f"{self.strategy.label}: needs query_size (the batch size of the loop)")
        self.dice = dice
        self.embeddings = embeddings
        self.dataset = dataset
        self.query_size = query_size
        self.rng = np.random.default_rng(seed)

    def compute_score(self, predictions: Any, target_predictions: Any = None) -> np.ndarray:
        """The strategy's score of every pool item (baal's hook; ``-inf`` = never selected)."""
        return self.strategy.scores(self.table(predictions))

    def get_ranks(self, predictions: Any, target_predictions: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Pool indices in acquisition order (selectable items only) and every item's score."""
        table = self.table(predictions)
        scores = self.strategy.scores(table)
        k = self.query_size if self.query_size is not None else max(len(table), 1)
        batch = self.strategy.select(table, k, self.rng).ids  # ids are pool positions
        by_score = table.ids[np.lexsort((table.ids, -scores))]
        rest = by_score[(scores[by_score] > -np.inf) & ~np.isin(by_score, batch)]
        return np.concatenate([batch, rest]).astype(np.int64), scores

    def table(self, predictions: Any) -> ScoreTable:
        """The score table of the pool: ids are pool positions ``0..n-1``."""
        array = _materialise(predictions)
        if array.ndim not in (2, 3):
            raise ValueError(
                f"predictions: expected [n, K] or [n, K, T] (T MC iterations), got shape {array.shape}; "
                "xal scores one label per image"
            )
        array = to_prob(array.astype(np.float64))
        n = array.shape[0]
        if array.ndim == 3:
            probabilities, passes = array.mean(axis=2), np.moveaxis(array, 2, 0)
        else:
            probabilities, passes = array, None
        dice = self._column(self.dice, n, "dice")
        return ScoreTable(
            ids=np.arange(n, dtype=np.int64),
            probabilities=probabilities,
            dice=np.full(n, np.nan) if dice is None else dice,
            mc_probabilities=passes,
            embeddings=self._column(self.embeddings, n, "embeddings"),
        )

    def _column(self, source: ColumnSource, n: int, name: str) -> np.ndarray | None:
        if source is None:
            return None
        values = np.asarray(source() if callable(source) else source, dtype=np.float64)
        if self.dataset is not None and not callable(source):
            labelled = np.asarray(self.dataset.labelled, dtype=bool)
            if values.shape[0] != labelled.shape[0]:
                raise ValueError(
                    f"{name}: with dataset=, expected one row per data set item ({labelled.shape[0]}), got {values.shape[0]}"
                )
            values = values[~labelled]
        if values.shape[0] != n:
            raise ValueError(
                f"{name}: {values.shape[0]} rows for a pool of {n} predictions (a max_sample subset of the pool, "
                "or a stale array? pass a callable, or dataset= with an array over the whole data set)"
            )
        return values


def _materialise(predictions: Any) -> np.ndarray:
    if isinstance(predictions, types.GeneratorType):
        chunks = [_as_numpy(chunk) for chunk in predictions]
        if not chunks:
            raise ValueError("predictions: the generator was empty")
        return np.concatenate(chunks)
    if isinstance(predictions, (list, tuple)):
        raise ValueError("predictions: multi-output models are not supported; pass the classification output")
    return _as_numpy(predictions)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
