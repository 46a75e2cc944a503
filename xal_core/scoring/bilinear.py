"""Source indices and weights of bilinear resampling, exactly as ``torch.nn.functional.interpolate``.

Every implementation of the scoring contract (the dense reference, the separable CPU path, the
Triton kernels) resamples the ``h×w`` CAM grid to the ROI frame with ``align_corners=False``.
Keeping the index arithmetic in one place is what makes them agree pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AxisSampling:
    """Where each output coordinate along one axis reads the input grid.

    ``value[out] = (1 - lam[out]) * grid[lo[out]] + lam[out] * grid[hi[out]]``.

    Attributes:
        lo: int64 ``[n_out]``, the lower source index (``floor`` of the clamped source coordinate).
        hi: int64 ``[n_out]``, ``min(lo + 1, n_in - 1)``.
        lam: ``[n_out]`` weight of ``hi``; forced to 0 where ``hi == lo`` so that border plateaus
            are exact copies of the border value rather than ``(1-λ)a + λa`` with rounding noise.
        source: ``[n_out]`` the clamped source coordinate itself, non-decreasing in ``out``.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    lam: torch.Tensor
    source: torch.Tensor


def axis_sampling(
    n_in: int,
    n_out: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> AxisSampling:
    """Bilinear source coordinates for resizing an axis of ``n_in`` samples to ``n_out``.

    Follows PyTorch's ``area_pixel_compute_source_index`` for ``align_corners=False`` with the
    scale ``n_in / n_out`` (no ``scale_factor``): ``src = max((out + 0.5) * scale - 0.5, 0)``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"axis sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    scale = n_in / n_out
    out = torch.arange(n_out, dtype=dtype, device=device)
    source = ((out + 0.5) * scale - 0.5).clamp_min(0.0)
    lo = source.floor().to(torch.int64).clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    lam = (source - lo.to(dtype)).clamp(0.0, 1.0)
    lam = torch.where(hi == lo, torch.zeros_like(lam), lam)
    return AxisSampling(lo=lo, hi=hi, lam=lam, source=source)


def interpolation_matrix(sampling: AxisSampling, n_in: int) -> torch.Tensor:
    """The ``[n_out, n_in]`` matrix ``R`` with ``resized = R @ grid`` along this axis."""
    n_out = sampling.lo.numel()
    matrix = torch.zeros(n_out, n_in, dtype=sampling.lam.dtype, device=sampling.lam.device)
    rows = torch.arange(n_out, device=sampling.lo.device)
    matrix.index_put_((rows, sampling.lo), 1.0 - sampling.lam, accumulate=True)
    matrix.index_put_((rows, sampling.hi), sampling.lam, accumulate=True)
    return matrix
