"""When a Grad-CAM map has no range: the one rule every scoring path implements.

The contract (docs/contract.md, "Flat maps") normalises the upsampled map by its range,
``(L − min) / (max − min)``, and calls a map *flat* (all zeros, no peak) when its range on the
``h×w`` grid is within what rounding alone can produce::

    flat  ⇔  max L − min L ≤ ε,   ε = FLAT_FACTOR · C · u · max_cells Σ_k |α_k A_k|

with ``u`` the unit roundoff of the precision the path sums the channels in. Why a bound and not
"max == min exactly": the grid is a ``C``-term floating-point sum, and BLAS libraries sum in a
different order on different CPUs (MKL on AMD and on Intel, say), so an exactly constant grid whose
channels cancel comes out constant on one host and a few ulps apart on another. Any error of a
``C``-term sum is below ``C · u · Σ|terms|``, so the computed range of an exactly flat grid is below
``ε / 4`` and the computed range of a grid whose exact range exceeds ``8 ε`` is above ``ε``: paths
(and hosts) can disagree only on items whose exact range lies within a factor ``FLAT_FACTOR`` of
``ε``, the *ambiguous band*.

Where the contract is silent, xal applies the same bound to the map *after* resampling: a grid with
a range whose bilinear resampling to the ROI frame has (computed) range ``≤ ε`` — a 1×1 frame, or a
coarse frame that reads only equal cells — is flat too, since ``(L − min) / (max − min)`` would be
0/0 or normalised rounding noise there. Resampled values are convex blends of grid values, so their
rounding is that of the grid plus a few units of the maximum, well inside the same ``ε``.

Every path (dense reference, separable torch path, compiled CPU kernel, Triton) computes ``ε`` with
:func:`flat_tolerance` semantics, from its own ``Σ_k |α_k A_k|`` folded into the pass that sums the
grid, and decides with :func:`is_flat`.
"""

from __future__ import annotations

import torch

__all__ = ["FLAT_FACTOR", "flat_tolerance", "is_flat", "roundoff_unit"]

#: ε is this many times the bound ``C · u · max Σ|α_k A_k|`` on the rounding of a channel sum, and
#: the ambiguous band is ``(ε / FLAT_FACTOR, FLAT_FACTOR · ε]``.
FLAT_FACTOR = 8.0


def roundoff_unit(dtype: torch.dtype) -> float:
    """The unit roundoff ``u`` of the precision a path sums its channels in (2⁻⁵³ for float64)."""
    return float(torch.finfo(dtype).eps) / 2.0


def flat_tolerance(magnitude: torch.Tensor, channels: int, unit: float) -> torch.Tensor:
    """``ε = FLAT_FACTOR · C · u · magnitude`` per item, where ``magnitude`` is
    ``max over cells of Σ_k |α_k A_k|`` (in the same scale as the grid)."""
    return magnitude * (FLAT_FACTOR * max(1, channels) * unit)


def is_flat(grid_range: torch.Tensor, map_range: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
    """bool ``[B]``: the grid's range, or the resampled map's, is within the rounding bound."""
    return (grid_range <= tolerance) | (map_range <= tolerance)
