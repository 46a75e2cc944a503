"""Triton kernels for the scoring contract, with the same API as ``xal_core.scoring``.

>>> import torch, xal_kernels
>>> from xal_core.scoring import Roi
>>> features, weights = torch.rand(2, 8, 7, 7), torch.rand(2, 8)
>>> roi = Roi.from_masks(torch.rand(2, 32, 32) > 0.5)
>>> scores = xal_kernels.cam_alignment(features, weights, roi)   # CPU tensors: xal_core path
>>> scores.dice.shape
torch.Size([2])

Routing (``XAL_KERNELS`` = auto | triton | torch | reference) is described in ``dispatch``; the
kernels live one op per module: ``xal_kernels/cam_alignment.py``, ``xal_kernels/uncertainty.py``
(plus ``topk.push_chunk``), each importable as ``from xal_kernels.cam_alignment import ...``; the
compiled CPU kernel (Numba) that CPU tensors take is ``xal_kernels/cpu_alignment.py``.

The public functions share their names with those op modules. Python's import system binds a
submodule onto its package under the submodule's name when it is first imported, which would
replace ``xal_kernels.cam_alignment`` (the function) by the module; the package class below keeps
the functions bound (the modules stay reachable through ``sys.modules`` and ``from ... import``).
"""

from __future__ import annotations

import sys
import types

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
from .topk import push_chunk

__all__ = [
    "BACKEND_ENV",
    "BACKENDS",
    "KernelsUnavailableError",
    "backend_for",
    "cam_alignment",
    "dual_score",
    "push_chunk",
    "uncertainty",
    "uncertainty_and_dual_score",
    "warm_up",
]

_ROUTED = frozenset({"cam_alignment", "uncertainty"})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        if name in _ROUTED and isinstance(value, types.ModuleType):
            return  # keep the routed function; the module is in sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
