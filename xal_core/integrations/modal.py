"""xal strategies as a modAL query strategy, for loops built on modAL's ``ActiveLearner``.

modAL calls a query strategy as ``strategy(learner, X_pool, n_instances=..., **kwargs)`` and expects
``(indices, metrics)`` back; ``learner.query(X_pool)`` then returns ``(indices, X_pool[indices])``.
:func:`make_query_strategy` builds such a function from an xal strategy. The predictive
distribution comes from ``learner.predict_proba(X_pool)``; what modAL does not know about, the
CAM–ROI Dice (and, where needed, MC-dropout passes or pooled features), the caller supplies either
as a callable ``(learner, X_pool) -> values`` evaluated at every query (modAL users usually delete
the queried rows from ``X_pool``, so fixed arrays go stale) or as an array aligned with ``X_pool``.

This module does not import modAL; the optional extra ``modal`` (``pip install 'xal-ml[modal]'``)
installs it for the loop itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xal_core.acquisition.strategies import ScoreTable, Strategy, make_strategy

__all__ = ["make_query_strategy"]

PoolColumn = np.ndarray | Callable[[Any, Any], Any] | None
QueryStrategy = Callable[..., tuple[np.ndarray, np.ndarray]]


def make_query_strategy(
    strategy: str | Strategy = "dual",
    *,
    dice: PoolColumn = None,
    mc_probabilities: PoolColumn = None,
    embeddings: PoolColumn = None,
    seed: int | None = None,
    **params: Any,
) -> QueryStrategy:
    """A modAL query strategy ranking ``X_pool`` with an xal strategy.

    Args:
        strategy: a name from ``STRATEGY_NAMES`` or a ``Strategy`` object.
        dice: the CAM–ROI Dice per pool row (NaN = ROI unknown); a callable
            ``(learner, X_pool) -> [n]`` or an array of ``n`` rows. None = no ROI known.
        mc_probabilities: ``[T, n, K]`` stochastic passes for ``"bald"``, same two forms.
        embeddings: ``[n, D]`` pooled features for ``diversity="kcenter"``, same two forms.
        seed: seeds one generator used by every query (stochastic strategies), so a whole run is
            reproducible.
        **params: the strategy's parameters (``weight``, ``uncertainty``, ``missing_roi``,
            ``diversity``, ``beta``, ``candidate_factor``).

    Returns:
        ``query(learner, X_pool, n_instances=1) -> (indices int64 [k'], scores float64 [k'])``:
        row positions in ``X_pool`` in acquisition order, ``k' = min(n_instances, selectable)``.

    Example:
        >>> import numpy as np
        >>> class Model:  # anything with predict_proba, e.g. a fitted modAL ActiveLearner
        ...     def predict_proba(self, X):
        ...         return np.column_stack([X[:, 0], 1 - X[:, 0]])
        >>> query = make_query_strategy("dual", dice=np.array([0.9, 0.0, 0.5]))
        >>> query(Model(), np.array([[0.5], [0.8], [0.99]]), n_instances=2)[0].tolist()
        [1, 0]
    """
    if isinstance(strategy, Strategy):
        if params:
            raise ValueError(f"params {sorted(params)} apply to a strategy name, not to a Strategy object")
        chosen = strategy
    else:
        chosen = make_strategy(strategy, **params)
    rng = np.random.default_rng(seed)

    def query(learner: Any, X_pool: Any, n_instances: int = 1, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        probabilities = np.asarray(learner.predict_proba(X_pool), dtype=np.float64)
        n = probabilities.shape[0]
        dice_values = _column(dice, learner, X_pool, n, "dice")
        table = ScoreTable(
            ids=np.arange(n, dtype=np.int64),
            probabilities=probabilities,
            dice=np.full(n, np.nan) if dice_values is None else dice_values,
            mc_probabilities=_column(mc_probabilities, learner, X_pool, n, "mc_probabilities", axis=1),
            embeddings=_column(embeddings, learner, X_pool, n, "embeddings"),
        )
        acquisition = chosen.select(table, n_instances, rng)
        return acquisition.ids, acquisition.scores

    query.__name__ = f"xal_{chosen.label.replace('+', '_')}_sampling"
    query.__doc__ = f"modAL query strategy: xal {chosen.label} (xal_core.integrations.modal)."
    return query


def _column(source: PoolColumn, learner: Any, X_pool: Any, n: int, name: str, axis: int = 0) -> np.ndarray | None:
    if source is None:
        return None
    values = np.asarray(source(learner, X_pool) if callable(source) else source, dtype=np.float64)
    if values.ndim <= axis or values.shape[axis] != n:
        raise ValueError(
            f"{name}: expected {n} pool rows (axis {axis}) to match X_pool, got shape {values.shape}; "
            "when queried rows are removed from X_pool, pass a callable (learner, X_pool) -> values"
        )
    return values
