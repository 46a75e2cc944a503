"""Triton kernels for the scoring contract, with the same API as ``xal_core.scoring``.

>>> import torch, xal_kernels
>>> from xal_core.scoring import Roi
>>> features, weights = torch.rand(2, 8, 7, 7), torch.rand(2, 8)
>>> roi = Roi.from_masks(torch.rand(2, 32, 32) > 0.5)
>>> scores = xal_kernels.cam_alignment(features, weights, roi)   # CPU tensors: xal_core path
>>> scores.dice.shape
torch.Size([2])

Routing (``XAL_KERNELS`` = auto | triton | numba | torch | reference) is described in ``dispatch``;
the Triton kernels live one op per module, ``xal_kernels/triton_alignment.py`` and
``xal_kernels/triton_uncertainty.py``, each importable as
``from xal_kernels.triton_alignment import ...``; the compiled CPU kernel (Numba) that CPU tensors
take is ``xal_kernels/cpu_alignment.py``.

The op modules are named ``triton_*`` so that no submodule shares a name with a routed function:
importing a submodule binds it onto its package under its own name, and a module called
``cam_alignment`` would replace the function ``xal_kernels.cam_alignment`` on first import.
"""

from __future__ import annotations

from .dispatch import (
    BACKEND_ENV,
    BACKENDS,
    KernelsUnavailableError,
    backend_for,
    cam_alignment,
    dual_score,
    uncertainty,
    uncertainty_and_dual_score,
    warm_up,
)

__all__ = [
    "BACKEND_ENV",
    "BACKENDS",
    "KernelsUnavailableError",
    "backend_for",
    "cam_alignment",
    "dual_score",
    "uncertainty",
    "uncertainty_and_dual_score",
    "warm_up",
]
