"""Routing between the Triton kernels, the CPU path and the dense reference.

``XAL_KERNELS`` (read at every call):

* unset, empty or ``auto``: CUDA tensors go to the Triton kernels (to the torch path, with one
  warning, when Triton is not installed), everything else to ``xal_core.scoring``;
* ``triton``: always the Triton kernels; on CPU tensors this needs Triton's interpreter
  (``TRITON_INTERPRET=1`` set before the kernels are first imported);
* ``torch``: always ``xal_core.scoring`` (the separable path), whatever the device;
* ``reference``: the dense torch reference ``xal_core.scoring.reference`` in float64, for debugging
  (uncertainty and fusion have no separate reference: they are ``xal_core.scoring`` itself).

Any other value raises ``ValueError``. Every route validates and isolates NaN/Inf items exactly as
``xal_core.scoring.cam_alignment`` does. The kernel modules are imported on first use only, so
importing ``xal_kernels`` never needs Triton.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

from xal_core import scoring
from xal_core.scoring.fusion import DualScore
from xal_core.scoring.results import AlignmentScores
from xal_core.scoring.roi import Roi

__all__ = [
    "BACKEND_ENV",
    "BACKENDS",
    "KernelsUnavailableError",
    "backend_for",
    "cam_alignment",
    "dual_score",
    "uncertainty",
    "uncertainty_and_dual_score",
]

BACKEND_ENV = "XAL_KERNELS"
BACKENDS = ("auto", "triton", "torch", "reference")
_warned_no_triton = False


class KernelsUnavailableError(RuntimeError):
    """The Triton route was forced but cannot run here."""


def requested_backend() -> str:
    """The value of ``XAL_KERNELS``, normalised; ``ValueError`` for an unknown one."""
    raw = os.environ.get(BACKEND_ENV, "")
    choice = raw.strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={raw!r} is not one of {', '.join(BACKENDS)} (unset = auto)")
    return choice


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def backend_for(tensor: object) -> str:
    """``"triton"``, ``"torch"`` or ``"reference"`` for an input living where ``tensor`` does."""
    global _warned_no_triton
    choice = requested_backend()
    on_cuda = isinstance(tensor, torch.Tensor) and tensor.is_cuda
    if choice == "auto":
        if not on_cuda:
            return "torch"
        if triton_available():
            return "triton"
        if not _warned_no_triton:
            warnings.warn(
                "xal_kernels: Triton is not installed, CUDA tensors are scored by the torch path; "
                "install the kernels with `pip install 'xal-ml[kernels]'`",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_no_triton = True
        return "torch"
    if choice == "triton":
        if not triton_available():
            raise KernelsUnavailableError(
                f"{BACKEND_ENV}=triton but Triton is not importable: install the 'kernels' extra, "
                "`pip install 'xal-ml[kernels]'` (Linux x86_64)"
            )
        if isinstance(tensor, torch.Tensor) and not on_cuda and not _interpreter_on():
            raise KernelsUnavailableError(
                f"{BACKEND_ENV}=triton on {tensor.device} tensors needs Triton's interpreter: "
                "set TRITON_INTERPRET=1 before the kernels are first imported (or use CUDA tensors)"
            )
    return choice


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _op(name: str, tensor: object) -> ModuleType:
    """Import ``xal_kernels.<name>`` lazily and check it was built for where ``tensor`` lives."""
    module = importlib.import_module(f"xal_kernels.{name}")
    if isinstance(tensor, torch.Tensor) and not tensor.is_cuda:
        from triton.runtime.interpreter import InterpretedFunction

        kernel = next(v for k, v in vars(module).items() if k.endswith("_kernel"))
        if not isinstance(kernel, InterpretedFunction):
            raise KernelsUnavailableError(
                f"xal_kernels.{name} was imported before TRITON_INTERPRET=1 was set, so its kernels "
                "are compiled for a GPU and cannot take CPU tensors; set it before the first import"
            )
    return module


# --------------------------------------------------------------------------- public ops
def cam_alignment(features: torch.Tensor, weights: torch.Tensor, roi: Roi, *, threshold: float = 0.5) -> AlignmentScores:
    """``xal_core.scoring.cam_alignment`` routed by device and ``XAL_KERNELS`` (same signature)."""
    route = backend_for(features)
    if route == "triton":
        return _op("cam_alignment", features).cam_alignment(features, weights, roi, threshold=threshold)
    if route == "reference":
        return scoring.alignment.cam_alignment_reference(features, weights, roi, threshold=threshold)
    return scoring.cam_alignment(features, weights, roi, threshold=threshold)


def uncertainty(logits: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """``xal_core.scoring.uncertainty`` routed by device and ``XAL_KERNELS`` (same signature)."""
    if backend_for(logits) == "triton":
        return _op("uncertainty", logits).uncertainty(logits, kind)
    return scoring.uncertainty(logits, kind)


def dual_score(
    uncertainty: torch.Tensor,
    misalignment: torch.Tensor | AlignmentScores,
    *,
    weight: float = 0.5,
    method: str = "weighted",
    missing_roi: str = "uncertainty_only",
    invalid: torch.Tensor | None = None,
) -> DualScore:
    """``xal_core.scoring.dual_score`` routed by device and ``XAL_KERNELS`` (same signature)."""
    options = dict(weight=weight, method=method, missing_roi=missing_roi, invalid=invalid)
    if backend_for(uncertainty) == "triton":
        return _op("uncertainty", uncertainty).dual_score(uncertainty, misalignment, **options)
    return scoring.dual_score(uncertainty, misalignment, **options)


def uncertainty_and_dual_score(
    logits: torch.Tensor,
    misalignment: torch.Tensor | AlignmentScores,
    *,
    kind: str = "entropy",
    weight: float = 0.5,
    method: str = "weighted",
    missing_roi: str = "uncertainty_only",
    invalid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DualScore]:
    """``u = uncertainty(logits, kind)`` and ``dual_score(u, misalignment, ...)``; one fused kernel
    on the Triton route (weighted fusion)."""
    options = dict(weight=weight, method=method, missing_roi=missing_roi, invalid=invalid)
    if backend_for(logits) == "triton":
        return _op("uncertainty", logits).uncertainty_and_dual_score(logits, misalignment, kind=kind, **options)
    u = scoring.uncertainty(logits, kind)
    return u, scoring.dual_score(u, misalignment, **options)
