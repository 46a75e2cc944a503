"""Public entry points for CAM/ROI alignment: validation, NaN isolation, choice of path."""

from __future__ import annotations

import torch

from . import reference, separable
from .inputs import check_cam_inputs, nonfinite_items, warn_nonfinite
from .parameters import DEFAULT_THRESHOLD, check_threshold
from .results import AlignmentScores
from .roi import Roi

__all__ = ["cam_alignment", "cam_alignment_reference", "gradcam_maps"]


def cam_alignment(
    features: torch.Tensor,
    weights: torch.Tensor,
    roi: Roi,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> AlignmentScores:
    """Score how well each image's Grad-CAM agrees with its ROI (docs/contract.md).

    The map is never materialised at full resolution: see ``separable`` for why that is exact.

    Args:
        features: ``[B, C, h, w]`` target-layer activations (float16, bfloat16, float32, float64).
        weights: ``[B, C]`` Grad-CAM channel weights ``α``.
        roi: the ROIs, whose frame ``H×W`` is the size the CAM is upsampled to.
        threshold: ``τ`` in ``(0, 1]``; a pixel of the normalised map is "attended" when ``>= τ``.

    Returns:
        ``AlignmentScores``; items with an unknown ROI get NaN metrics, items with NaN/Inf inputs
        get NaN metrics and ``invalid = True`` (a ``NonFiniteInputWarning`` reports how many).

    Example:
        >>> import torch
        >>> from xal_core.scoring import Roi, cam_alignment
        >>> features = torch.rand(2, 8, 7, 7)
        >>> roi = Roi.from_boxes([torch.tensor([[10.0, 20.0, 60.0, 90.0]]), None], size=(112, 112))
        >>> scores = cam_alignment(features, torch.rand(2, 8), roi)
        >>> bool(scores.dice[1].isnan())   # unknown ROI
        True
    """
    check_cam_inputs(features, weights, roi)
    check_threshold(threshold)
    roi = roi.to(features.device)
    features, weights = features.detach(), weights.detach()  # thresholded scores have no gradient
    # The separable path flags NaN/Inf items itself, from its float64 channel sum (see cam_grids),
    # which spares a separate pass over the features.
    scores = separable.cam_alignment_separable(features, weights, roi, threshold=threshold)
    blank = scores.invalid | ~roi.known
    for field in (scores.dice, scores.soft_dice, scores.roi_energy, scores.pointing_hit):
        field.masked_fill_(blank, float("nan"))
    warn_nonfinite(scores.n_invalid, "features, CAM weights or channel sum")
    return scores


def cam_alignment_reference(
    features: torch.Tensor,
    weights: torch.Tensor,
    roi: Roi,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> AlignmentScores:
    """``cam_alignment`` computed the obvious way, on dense float64 maps (``reference.py``).

    Same checks, NaN isolation and results as :func:`cam_alignment`, at many times the cost: this is
    what ``XAL_KERNELS=reference`` runs when a fast path is in doubt.
    """
    check_cam_inputs(features, weights, roi)
    check_threshold(threshold)
    roi = roi.to(features.device)
    # Invalid: a NaN/Inf input, or a float64 channel sum that overflows (docs/contract.md).
    invalid = nonfinite_items(features, weights)
    invalid |= ~torch.isfinite(torch.einsum("bc,bchw->bhw", weights.double(), features.double())).flatten(1).all(dim=1)
    if invalid.any():
        keep = (~invalid)[:, None]
        features = torch.where(keep[..., None, None], features, torch.zeros((), dtype=features.dtype))
        weights = torch.where(keep, weights, torch.zeros((), dtype=weights.dtype))
    scores = reference.cam_alignment_dense(features, weights, roi, threshold=threshold, dtype=torch.float64)
    blank = invalid | ~roi.known
    for field in (scores.dice, scores.soft_dice, scores.roi_energy, scores.pointing_hit):
        field.masked_fill_(blank, float("nan"))
    scores.invalid.copy_(invalid)
    warn_nonfinite(int(invalid.sum()), "features, CAM weights or channel sum")
    return scores


def gradcam_maps(
    features: torch.Tensor,
    weights: torch.Tensor,
    size: tuple[int, int],
    *,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Normalised Grad-CAM maps ``[B, H, W]`` in ``[0, 1]`` (float32), for visualisation.

    Items with NaN/Inf inputs come back as NaN maps.
    """
    check_cam_inputs(features, weights)
    height, width = Roi._frame(size)
    invalid = nonfinite_items(features, weights)
    out = torch.empty(features.shape[0], height, width, dtype=torch.float32, device=features.device)
    for start in range(0, features.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        grids, tolerance = reference.cam_grids(features[part], weights[part], torch.float64)
        out[part] = reference.normalised_maps(grids, (height, width), tolerance).float()
    out[invalid] = float("nan")
    warn_nonfinite(int(invalid.sum()), "features, CAM weights or channel sum")
    return out
