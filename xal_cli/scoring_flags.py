"""The scoring flags that ``xal score``, ``xal rank-demo`` and ``xal run`` share, and the
``ScoringConfig`` they make: one place for their names and choices; the defaults come from
``xal_core.scoring.parameters``, the one home of τ, λ and the rest."""

from __future__ import annotations

import argparse
import dataclasses

from xal_core.scoring.parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
    FUSION_METHODS,
    MISSING_ROI_POLICIES,
    UNCERTAINTY_KINDS,
    ScoringConfig,
)

__all__ = ["PRESET_WEIGHTS", "add_scoring_flags", "scoring_config"]

#: ``--preset``: λ fixed by name (``None`` = ``--weight``).
PRESET_WEIGHTS = {"dual": None, "uncertainty": 1.0, "misalignment": 0.0}


def add_scoring_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, presets: bool = False,
                      fusion_flag: bool = True) -> None:
    """``--uncertainty --weight --threshold --fusion --missing-roi`` on a parser or an argument group
    (``--preset`` if asked; ``fusion_flag=False`` for ``xal run``, whose strategies rank by themselves)."""
    if presets:
        parser.add_argument("--preset", choices=sorted(PRESET_WEIGHTS), default="dual",
                            help="dual = λ·U + (1−λ)·M; uncertainty = U only; misalignment = M only")
    parser.add_argument("--uncertainty", choices=UNCERTAINTY_KINDS, default=DEFAULT_UNCERTAINTY)
    parser.add_argument("--weight", type=float, default=DEFAULT_WEIGHT,
                        help=f"λ: weight of uncertainty vs misalignment (default {DEFAULT_WEIGHT})")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"τ: CAM binarisation threshold (default {DEFAULT_THRESHOLD})")
    if fusion_flag:
        parser.add_argument("--fusion", choices=FUSION_METHODS, default=DEFAULT_FUSION)
    parser.add_argument("--missing-roi", choices=MISSING_ROI_POLICIES, default=DEFAULT_MISSING_ROI)


def scoring_config(args: argparse.Namespace) -> ScoringConfig:
    """The flags as a checked ``ScoringConfig`` (a bad value: ``ValueError`` naming it, one line).

    A field without a flag (``fusion`` for ``xal run``) keeps its default; ``--preset``, where
    there is one, fixes λ by name.
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ScoringConfig) if hasattr(args, f.name)}
    preset = PRESET_WEIGHTS.get(getattr(args, "preset", None))
    if preset is not None:
        values["weight"] = preset
    return ScoringConfig(**values)
