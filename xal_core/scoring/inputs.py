"""Checks on the tensors handed to the scoring functions.

Structural problems (wrong rank, dtype or batch size) are the caller's bug and raise a
``ValueError`` naming the argument; bad *values* in one item (NaN/Inf) are a property of one image
in a pool of millions, so they are flagged per item and never sink the rest of the batch.
"""

from __future__ import annotations

import warnings

import torch

from .roi import Roi

__all__ = ["NonFiniteInputWarning", "FEATURE_DTYPES", "check_cam_inputs", "nonfinite_items", "warn_nonfinite"]

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class NonFiniteInputWarning(UserWarning):
    """Some items carried NaN/Inf; their scores are NaN and they rank last."""


def check_cam_inputs(features: torch.Tensor, weights: torch.Tensor, roi: Roi | None = None) -> None:
    """Raise ``ValueError`` for structurally invalid ``features [B,C,h,w]``, ``weights [B,C]`` and ROI."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features: expected a torch.Tensor [B, C, h, w], got {type(features).__name__}")
    if features.dim() != 4:
        raise ValueError(f"features: expected shape [B, C, h, w], got {tuple(features.shape)}")
    if features.dtype not in FEATURE_DTYPES:
        raise ValueError(f"features: dtype {features.dtype} is not one of float16, bfloat16, float32, float64")
    batch, channels, height, width = features.shape
    if channels < 1 or height < 1 or width < 1:
        raise ValueError(f"features: C, h and w must be >= 1, got {tuple(features.shape)}")
    if not isinstance(weights, torch.Tensor):
        raise ValueError(f"weights: expected a torch.Tensor [B, C], got {type(weights).__name__}")
    if weights.dtype not in FEATURE_DTYPES:
        raise ValueError(f"weights: dtype {weights.dtype} is not one of float16, bfloat16, float32, float64")
    if weights.shape != (batch, channels):
        raise ValueError(f"weights: expected shape [{batch}, {channels}] to match features, got {tuple(weights.shape)}")
    if weights.device != features.device:
        raise ValueError(f"weights: on {weights.device}, features on {features.device}")
    if roi is None:
        return
    if not isinstance(roi, Roi):
        raise ValueError(f"roi: expected an xal_core.scoring.Roi, got {type(roi).__name__}")
    if roi.batch_size != batch:
        raise ValueError(f"roi: holds {roi.batch_size} items, features hold {batch}")


def nonfinite_items(*tensors: torch.Tensor) -> torch.Tensor:
    """bool ``[B]``: items with any NaN/Inf in any of the given per-item tensors."""
    flags = None
    for tensor in tensors:
        bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
        flags = bad if flags is None else flags | bad
    return flags


def warn_nonfinite(count: int, what: str) -> None:
    """One warning per call, with the count, so a pool-wide job can surface it without log spam."""
    if count:
        warnings.warn(
            f"{count} item(s) had NaN/Inf in their {what}; their scores are NaN and they rank last",
            NonFiniteInputWarning,
            stacklevel=3,
        )
