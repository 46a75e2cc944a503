"""The strategies by name: the list of names, registration, and ``make_strategy``.

Apart from ``base.py`` because it knows the diversity wrapper (``diversity.py``), which is itself a
strategy: in the base class's module the two would import each other.

>>> make_strategy("dual", weight=0.7, diversity="power", beta=2.0).label
'dual+power'
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

from xal_core.scoring.parameters import ScoringConfig

from .base import Strategy
from .diversity import Diverse

__all__ = ["STRATEGY_NAMES", "make_strategy", "reads_rois", "register_strategy", "scoring_params"]

STRATEGY_NAMES: tuple[str, ...] = (
    "random",
    "entropy",
    "margin",
    "least_confidence",
    "bald",
    "misalignment",
    "dual",
    "dual_rank",
)
DIVERSITY_PARAMS: tuple[str, ...] = ("beta", "candidate_factor")

_REGISTRY: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound="type[Strategy]")


def register_strategy(cls: S) -> S:
    """Class decorator: make ``cls`` available to :func:`make_strategy` under ``cls.name``."""
    if cls.name not in STRATEGY_NAMES:
        raise RuntimeError(f"strategy name {cls.name!r} is not listed in STRATEGY_NAMES")
    _REGISTRY[cls.name] = cls
    return cls


def make_strategy(name: str, *, diversity: str | None = None, scoring: ScoringConfig | None = None,
                  **params: Any) -> Strategy:
    """Build a strategy by name.

    Args:
        name: one of ``STRATEGY_NAMES``.
        diversity: optional batch-diversity mode wrapping it: ``"power"``, ``"softrank"`` or
            ``"kcenter"`` (see :class:`~xal_core.acquisition.strategies.Diverse`).
        scoring: the run's scoring parameters; the strategy receives each of them that its
            constructor names (:func:`scoring_params`), so a caller hands over the whole config and
            never decides strategy by strategy which of λ, ``uncertainty``, ``missing_roi`` apply.
        **params: the strategy's own parameters (``weight``, ``uncertainty``, ``missing_roi``;
            they override ``scoring``'s) and, with ``diversity``, the wrapper's (``beta``,
            ``candidate_factor``).

    Example:
        >>> make_strategy("dual_rank", scoring=ScoringConfig(weight=0.2)).weight
        0.2
    """
    factory = _factory(name)
    wrapper_params = {key: params.pop(key) for key in DIVERSITY_PARAMS if key in params}
    if wrapper_params and diversity is None:
        raise ValueError(f"{', '.join(sorted(wrapper_params))}: only apply with diversity='power'|'softrank'|'kcenter'")
    if scoring is not None:
        params = {**scoring_params(name, scoring), **params}
    base = _construct(factory, name, params)
    if diversity is None:
        return base
    return Diverse(base, diversity, **wrapper_params)


def scoring_params(name: str, scoring: ScoringConfig) -> dict[str, Any]:
    """The fields of ``scoring`` that strategy ``name``'s constructor takes, by their names.

    Read off the constructor's signature rather than listed per strategy: a strategy that takes
    ``weight`` gets λ whatever it is called (``misalignment`` takes none, being λ = 0).

    >>> scoring_params("dual_rank", ScoringConfig(weight=0.9))["weight"]
    0.9
    >>> scoring_params("entropy", ScoringConfig())
    {}
    """
    accepted = _accepted(_factory(name))
    return {f.name: getattr(scoring, f.name) for f in dataclasses.fields(scoring) if f.name in accepted}


def reads_rois(name: str) -> bool:
    """Whether strategy ``name`` ranks by the CAM–ROI Dice (the class says so, not a list kept elsewhere).

    >>> [name for name in STRATEGY_NAMES if reads_rois(name)]
    ['misalignment', 'dual', 'dual_rank']
    """
    return _factory(name).reads_rois


def _factory(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise ValueError(f"strategy: expected one of {', '.join(STRATEGY_NAMES)}, got {name!r}")
    return _REGISTRY[name]


def _accepted(factory: type[Strategy]) -> list[str]:
    return [key for key in inspect.signature(factory).parameters if key not in ("self", "args", "kwargs")]


def _construct(factory: type[Strategy], name: str, params: dict[str, Any]) -> Strategy:
    accepted = _accepted(factory)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        raise ValueError(f"strategy {name!r}: unknown parameter(s) {', '.join(unknown)} ({takes})")
    return factory(**params)
