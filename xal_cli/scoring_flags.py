"""The scoring flags that ``xal score`` and ``xal rank-demo`` share, and the ``ScoringConfig`` they
make: one place for their names, choices and defaults (which come from
``xal_core.scoring.parameters``, the one home of τ, λ and the rest)."""

from __future__ import annotations

import argparse

from xal_core.acquisition import ScoringConfig
from xal_core.scoring.parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
    FUSION_METHODS,
    MISSING_ROI_POLICIES,
    UNCERTAINTY_KINDS,
)

__all__ = ["PRESET_WEIGHTS", "add_scoring_flags", "scoring_config"]

#: ``--preset``: λ fixed by name (``None`` = ``--weight``). Named ``--strategy`` before 0.2, which
#: the loop uses for the acquisition class; the old flag still works.
PRESET_WEIGHTS = {"dual": None, "uncertainty": 1.0, "misalignment": 0.0}


def add_scoring_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, presets: bool = False,
                      fusion: bool = True) -> None:
    """``--uncertainty --weight --threshold --fusion --missing-roi`` on a parser or an argument group
    (``--preset`` if asked; ``fusion=False`` for ``xal run``, whose strategies rank by themselves)."""
    if presets:
        parser.add_argument("--preset", "--strategy", dest="preset", choices=sorted(PRESET_WEIGHTS), default="dual",
                            help="dual = λ·U + (1−λ)·M; uncertainty = U only; misalignment = M only "
                                 "(--strategy is the old name of this flag)")
    parser.add_argument("--uncertainty", choices=UNCERTAINTY_KINDS, default=DEFAULT_UNCERTAINTY)
    parser.add_argument("--weight", type=float, default=DEFAULT_WEIGHT,
                        help=f"λ: weight of uncertainty vs misalignment (default {DEFAULT_WEIGHT})")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"τ: CAM binarisation threshold (default {DEFAULT_THRESHOLD})")
    if fusion:
        parser.add_argument("--fusion", choices=FUSION_METHODS, default=DEFAULT_FUSION)
    parser.add_argument("--missing-roi", choices=MISSING_ROI_POLICIES, default=DEFAULT_MISSING_ROI)


def scoring_config(args: argparse.Namespace) -> ScoringConfig:
    """The flags as a checked ``ScoringConfig`` (a bad value: ``ValueError`` naming it, one line)."""
    preset = PRESET_WEIGHTS.get(getattr(args, "preset", "dual"))
    return ScoringConfig(uncertainty=args.uncertainty, weight=args.weight if preset is None else preset,
                         threshold=args.threshold, fusion=args.fusion, missing_roi=args.missing_roi)
