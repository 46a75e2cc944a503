"""The scoring contract (docs/contract.md) written the obvious way: dense maps, one torch op per step.

This is the readable reference that the fast paths are checked against, what
``XAL_KERNELS=reference`` runs, and (in float32, with ``upsample="interpolate"``, unchunked) the
"torch eager" baseline of the benchmarks. It materialises every full-resolution map, so it is
chunked to bound memory.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from . import flatness
from .bilinear import axis_sampling, interpolation_matrix
from .parameters import DEFAULT_THRESHOLD
from .results import AlignmentScores, empty_scores
from .roi import Roi

__all__ = ["cam_grids", "upsample", "normalised_maps", "cam_alignment_dense"]

Upsampling = Literal["matrix", "interpolate"]


def cam_grids(features: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``ReLU(Σ_k α_k A_k)`` on the ``h×w`` grid, ``[B, h, w]`` in ``dtype``, and each item's flat
    tolerance ``ε`` (``flatness``: from ``max over cells of Σ_k |α_k A_k|``, summed in ``dtype``)."""
    alpha, maps = weights.to(dtype), features.to(dtype)
    grids = torch.relu(torch.einsum("bc,bchw->bhw", alpha, maps))
    magnitude = torch.einsum("bc,bchw->bhw", alpha.abs(), maps.abs()).amax(dim=(1, 2)) if grids.numel() else grids.new_zeros(len(grids))
    return grids, flatness.flat_tolerance(magnitude, features.shape[1], flatness.roundoff_unit(dtype))


def upsample(grids: torch.Tensor, size: tuple[int, int], method: Upsampling = "matrix") -> torch.Tensor:
    """Bilinear, ``align_corners=False`` resampling of ``[B, h, w]`` grids to ``size``.

    ``"matrix"`` applies ``Ry @ grid @ Rx^T`` with the weights of ``bilinear.axis_sampling``, whose
    clamped borders copy the border value exactly; ``"interpolate"`` calls
    ``F.interpolate`` (the same maths, but ``(1-λ)v + λv`` on the borders adds ulp noise that can
    move a "first maximum" along a plateau).
    """
    if method == "interpolate":
        return F.interpolate(grids[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if method != "matrix":
        raise ValueError(f"method: expected 'matrix' or 'interpolate', got {method!r}")
    _, h, w = grids.shape
    rows = interpolation_matrix(axis_sampling(h, size[0], dtype=grids.dtype, device=grids.device), h)
    cols = interpolation_matrix(axis_sampling(w, size[1], dtype=grids.dtype, device=grids.device), w)
    return rows @ grids @ cols.T


def normalised_maps(
    grids: torch.Tensor, size: tuple[int, int], tolerance: torch.Tensor, method: Upsampling = "matrix"
) -> torch.Tensor:
    """Upsampling to ``size`` then per-image min-max normalisation, ``[B, H, W]``.

    A flat map (``flatness``: the grid's range, or the resampled map's, within the item's
    ``tolerance`` ε from :func:`cam_grids`) normalises to all zeros: rounding noise is never
    stretched into a map.
    """
    # Shifting by the grid's minimum leaves the normalised map unchanged and is exact on a near-flat
    # grid (close floats subtract exactly): the map is then normalised from exact differences.
    grids = grids - grids.amin(dim=(1, 2), keepdim=True) if grids.numel() else grids
    maps = upsample(grids, size, method)
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    grid_range = grids.amax(dim=(1, 2)) - grids.amin(dim=(1, 2))
    flat = flatness.is_flat(grid_range, (high - low)[:, 0, 0], tolerance.to(grids.dtype))
    span = torch.where(flat[:, None, None], torch.ones_like(high), high - low)
    maps = (maps - low) / span
    return torch.where(flat[:, None, None], torch.zeros_like(maps), maps)


def cam_alignment_dense(
    features: torch.Tensor,
    weights: torch.Tensor,
    roi: Roi,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 64,
    method: Upsampling = "matrix",
) -> AlignmentScores:
    """Alignment scores from dense maps. Inputs are assumed checked and finite (see ``alignment``);
    unknown ROIs are not blanked here (the public entry points do that)."""
    scores = empty_scores(features.shape[0], features.device)
    for start in range(0, features.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        grids, tolerance = cam_grids(features[part], weights[part], dtype)
        maps = normalised_maps(grids, roi.size, tolerance, method)
        truth = roi[part].to_masks().to(dtype)
        predicted = (maps >= threshold).to(dtype)
        overlap = (predicted * truth).sum(dim=(1, 2))
        n_predicted = predicted.sum(dim=(1, 2))
        n_truth = truth.sum(dim=(1, 2))
        mass = maps.sum(dim=(1, 2))
        mass_in_roi = (maps * truth).sum(dim=(1, 2))
        flat_maps = maps.flatten(1)
        peak = flat_maps.argmax(dim=1)
        has_peak = flat_maps.amax(dim=1) > flat_maps.amin(dim=1)
        hit = truth.flatten(1).gather(1, peak[:, None])[:, 0] * has_peak

        both_empty = (n_predicted + n_truth) == 0
        scores.dice[part] = torch.where(both_empty, 1.0, 2 * overlap / (n_predicted + n_truth).clamp_min(1)).float()
        no_mass = (mass + n_truth) == 0
        scores.soft_dice[part] = torch.where(no_mass, 1.0, 2 * mass_in_roi / (mass + n_truth).clamp_min(1e-300)).float()
        scores.roi_energy[part] = torch.where(mass == 0, 0.0, mass_in_roi / mass.clamp_min(1e-300)).float()
        scores.pointing_hit[part] = hit.float()
    return scores
