"""The scoring parameters of docs/contract.md: each default and each check, in one place.

τ (the CAM threshold), λ (the weight of uncertainty in the dual score), the uncertainty measure,
the missing-ROI policy and the fusion method are read by every layer: the scoring functions and
the kernels take them as keyword arguments, the strategies and the loop's protocol as settings, the
service's codec off the wire, the CLI from flags. Each of those takes its default from here and
validates through here, so a default or an allowed range is changed once, and a value that one
layer accepts is never refused by the next.

:class:`ScoringConfig` bundles the five for the code that passes them on together (the one scoring
function ``score_batch``, scoring jobs, pool scorers).

>>> ScoringConfig().threshold == DEFAULT_THRESHOLD and ScoringConfig().weight == DEFAULT_WEIGHT
True
>>> check_weight(1.5)
Traceback (most recent call last):
...
ValueError: weight: expected a number in [0, 1], got 1.5
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_MISSING_ROI",
    "DEFAULT_THRESHOLD",
    "DEFAULT_UNCERTAINTY",
    "DEFAULT_WEIGHT",
    "FUSION_METHODS",
    "FusionMethod",
    "MISSING_ROI_POLICIES",
    "MissingRoiPolicy",
    "THRESHOLD_RANGE",
    "UNCERTAINTY_KINDS",
    "UncertaintyKind",
    "WEIGHT_RANGE",
    "ScoringConfig",
    "check_choice",
    "check_fusion",
    "check_missing_roi",
    "check_threshold",
    "check_uncertainty",
    "check_weight",
    "threshold_in_range",
    "weight_in_range",
]

UncertaintyKind = Literal["entropy", "margin", "least_confidence"]
FusionMethod = Literal["weighted", "rank"]
MissingRoiPolicy = Literal["uncertainty_only", "exclude"]

#: τ: a pixel of the normalised CAM is "attended" when it is ``>= τ``.
DEFAULT_THRESHOLD = 0.5
#: λ: ``s = λ·U + (1 − λ)·M``; 0.5 weighs the two criteria equally.
DEFAULT_WEIGHT = 0.5
UNCERTAINTY_KINDS: tuple[str, ...] = ("entropy", "margin", "least_confidence")
DEFAULT_UNCERTAINTY: UncertaintyKind = "entropy"
#: ``uncertainty_only``: an item without an ROI is scored by ``U`` alone; ``exclude``: never selected.
MISSING_ROI_POLICIES: tuple[str, ...] = ("uncertainty_only", "exclude")
DEFAULT_MISSING_ROI: MissingRoiPolicy = "uncertainty_only"
#: ``weighted``: the values; ``rank``: the two criteria's percentile ranks over the whole pool.
FUSION_METHODS: tuple[str, ...] = ("weighted", "rank")
DEFAULT_FUSION: FusionMethod = "weighted"

WEIGHT_RANGE = "[0, 1]"
THRESHOLD_RANGE = "(0, 1]"


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (NumPy scalars included, bools not), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def weight_in_range(value: Any) -> bool:
    """λ must lie in ``[0, 1]`` (NaN does not)."""
    number = _number(value)
    return number is not None and 0.0 <= number <= 1.0


def threshold_in_range(value: Any) -> bool:
    """τ must lie in ``(0, 1]``: τ = 0 would call every pixel attended, a constant map included."""
    number = _number(value)
    return number is not None and 0.0 < number <= 1.0


def check_weight(value: Any, name: str = "weight") -> float:
    """λ as a float; ``ValueError`` naming ``name`` when it is not a number in ``[0, 1]``."""
    if not weight_in_range(value):
        raise ValueError(f"{name}: expected a number in {WEIGHT_RANGE}, got {value!r}")
    return float(value)


def check_threshold(value: Any, name: str = "threshold") -> float:
    """τ as a float; ``ValueError`` naming ``name`` when it is not a number in ``(0, 1]``."""
    if not threshold_in_range(value):
        raise ValueError(f"{name}: expected a number in {THRESHOLD_RANGE}, got {value!r}")
    return float(value)


def check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    """``value`` when it is one of ``choices``; ``ValueError`` listing them otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def check_uncertainty(value: Any, name: str = "uncertainty") -> str:
    """One of :data:`UNCERTAINTY_KINDS` (the strategies add ``bald``, which needs MC passes)."""
    return check_choice(value, UNCERTAINTY_KINDS, name)


def check_missing_roi(value: Any, name: str = "missing_roi") -> str:
    """One of :data:`MISSING_ROI_POLICIES`."""
    return check_choice(value, MISSING_ROI_POLICIES, name)


def check_fusion(value: Any, name: str = "fusion") -> str:
    """One of :data:`FUSION_METHODS` (``dual_score`` calls it ``method``)."""
    return check_choice(value, FUSION_METHODS, name)


@dataclass(frozen=True)
class ScoringConfig:
    """The parameters of the dual acquisition score (docs/contract.md), checked when built.

    Attributes:
        uncertainty: ``"entropy"``, ``"margin"`` or ``"least_confidence"``.
        weight: ``λ`` in ``s = λ·U + (1 − λ)·M``.
        threshold: ``τ`` binarising the normalised CAM.
        fusion: ``"weighted"`` (per batch, streams) or ``"rank"`` (needs the whole pool's U and M).
        missing_roi: ``"uncertainty_only"`` or ``"exclude"`` for items without an ROI.
    """

    uncertainty: str = DEFAULT_UNCERTAINTY
    weight: float = DEFAULT_WEIGHT
    threshold: float = DEFAULT_THRESHOLD
    fusion: FusionMethod = DEFAULT_FUSION
    missing_roi: MissingRoiPolicy = DEFAULT_MISSING_ROI

    def __post_init__(self) -> None:
        check_uncertainty(self.uncertainty)
        check_weight(self.weight)
        check_threshold(self.threshold)
        check_fusion(self.fusion)
        check_missing_roi(self.missing_roi)

