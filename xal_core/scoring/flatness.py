"""When a Grad-CAM map has no range: the one rule every scoring path implements.

DESIGN.md §2 normalises the upsampled map by its range, ``(L − min) / (max − min)``, and calls a map
*flat* (all zeros, no peak) when its grid is constant. One more case has no range: a grid that is not
constant but whose resampling to the ROI frame is (a 1×1 frame; a coarse frame that only reads equal
values). There ``(L − min) / (max − min)`` is 0/0, and xal treats the map as flat too. The rule, in
full (docs/scoring.md, "No range"):

    a map is flat  ⇔  max(grid) == min(grid) exactly                           (the contract)
                  or  the bilinear resampling of the grid, in exact arithmetic, is constant

and any positive range, however small, is normalised. Every path (dense reference, separable torch
path, compiled CPU kernel, Triton) decides it the same way:

1. ``grid_max == grid_min`` on the path's own grid (float64 for float64 inputs; see each path);
2. otherwise, from the computed extremes of the upsampled map: a computed range above
   ``NEAR_FLAT_ULPS`` units of roundoff of the grid maximum cannot come from rounding alone (a
   bilinear value is a convex blend of grid values, computed to within a few units of roundoff of
   the grid maximum), so the map is not flat; a computed range of 0 is flat, since there is nothing
   to divide by;
3. in between (a *suspect*), the rounding could have faked the range or hidden it: decide exactly,
   with rational arithmetic on the grid values and the contract's exact bilinear weights
   (:func:`resampled_map_is_constant`). Suspects never occur in real Grad-CAMs; the exact check costs
   microseconds to a millisecond per suspect.

Paths call :func:`suspects` on their extremes and :func:`settle_suspects` (or, the separable path,
:func:`resampled_map_is_constant` directly) on the suspects.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch

from .results import AlignmentScores

__all__ = [
    "NEAR_FLAT_ULPS",
    "exact_axis",
    "resampled_map_is_constant",
    "roundoff_unit",
    "settle_suspects",
    "suspects",
]

#: A computed map range at most this many units of roundoff of the grid maximum is decided exactly.
#: A bilinear value is two blends of non-negative grid values: its error is a few units of roundoff
#: of the grid maximum; 64 keeps a wide margin and still treats 1e-14 of the maximum as real.
NEAR_FLAT_ULPS = 64


def roundoff_unit(dtype: torch.dtype) -> float:
    """The unit of roundoff of the precision a path computes its map in (2^-53 for float64)."""
    return float(torch.finfo(dtype).eps) / 2.0


def suspects(span: torch.Tensor, grid_max: torch.Tensor, flat: torch.Tensor, unit: float) -> torch.Tensor:
    """bool ``[B]``: items that are not (yet) flat and whose computed range is small enough that
    rounding may decide it: they need :func:`resampled_map_is_constant`."""
    return ~flat & (span <= NEAR_FLAT_ULPS * unit * grid_max)


def exact_axis(n_in: int, n_out: int) -> list[tuple[int, int, Fraction]]:
    """Per output index, ``(lo, hi, λ)`` of bilinear resampling (``align_corners=False``) in exact
    arithmetic: the source coordinate is ``((2·out + 1)·n_in − n_out) / (2·n_out)``, clamped at 0."""
    out = []
    den = 2 * n_out
    for index in range(n_out):
        num = (2 * index + 1) * n_in - n_out
        if num <= 0:
            lo, lam = 0, Fraction(0)
        else:
            lo, rest = divmod(num, den)
            lam = Fraction(rest, den)
        if lo >= n_in - 1:
            lo, lam = n_in - 1, Fraction(0)
        out.append((lo, min(lo + 1, n_in - 1), lam))
    return out


def _group_ends(axis: list[tuple[int, int, Fraction]]) -> list[int]:
    """Outputs that open or close a run reading the same pair of inputs: along such a run the value
    is linear in a non-decreasing λ, so the extremes of the map lie on these rows and columns."""
    ends = []
    for index, (lo, _, _) in enumerate(axis):
        if index == 0 or axis[index - 1][0] != lo or index == len(axis) - 1 or axis[index + 1][0] != lo:
            ends.append(index)
    return ends


def resampled_map_is_constant(grid: np.ndarray, height: int, width: int) -> bool:
    """Whether the bilinear resampling of ``grid`` (``[h, w]`` float values, taken exactly) to
    ``height × width`` is constant in exact arithmetic (only the candidate pixels are evaluated)."""
    grid = np.asarray(grid, dtype=np.float64)
    h, w = grid.shape
    rows, cols = exact_axis(h, height), exact_axis(w, width)
    exact = {}

    def value(i: int, j: int) -> Fraction:
        if (i, j) not in exact:
            exact[(i, j)] = Fraction(float(grid[i, j]))
        return exact[(i, j)]

    first = None
    for y in _group_ends(rows):
        y_lo, y_hi, mu = rows[y]
        for x in _group_ends(cols):
            x_lo, x_hi, lam = cols[x]
            top = (1 - lam) * value(y_lo, x_lo) + lam * value(y_lo, x_hi)
            bottom = (1 - lam) * value(y_hi, x_lo) + lam * value(y_hi, x_hi)
            v = (1 - mu) * top + mu * bottom
            if first is None:
                first = v
            elif v != first:
                return False
    return True


def settle_suspects(
    scores: AlignmentScores,
    suspect: torch.Tensor,
    known: torch.Tensor,
    grid_of: Callable[[int], np.ndarray],
    frame: tuple[int, int],
    roi_is_empty: Callable[[int], bool],
) -> None:
    """Give every suspect whose resampled map is exactly constant the scores of a flat map (in place).

    A flat map attends nothing and has no mass: Dice and soft Dice are 1 for an empty ROI and 0
    otherwise, ROI energy and pointing hit 0. Unknown ROIs and invalid items keep their NaN.

    Args:
        suspect: bool ``[B]`` from :func:`suspects`.
        known: bool ``[B]``, items with a known ROI.
        grid_of: item index → that item's grid ``[h, w]`` exactly as the path computed it.
        frame: the ROI frame ``(H, W)``.
        roi_is_empty: item index → whether its (known) ROI has no pixel.
    """
    items = torch.nonzero(suspect.cpu() & known.cpu() & ~scores.invalid.cpu()).flatten().tolist()
    for b in items:
        if not resampled_map_is_constant(grid_of(b), *frame):
            continue
        both_empty = 1.0 if roi_is_empty(b) else 0.0
        for field, value in (("dice", both_empty), ("soft_dice", both_empty), ("roi_energy", 0.0), ("pointing_hit", 0.0)):
            getattr(scores, field)[b] = value
