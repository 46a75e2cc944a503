"""Routing between the Triton kernels, the CPU path and the dense reference.

``XAL_KERNELS`` (read at every call):

* unset, empty or ``auto``: CUDA tensors go to the Triton kernels (to the torch path, with one
  warning, when Triton is not installed); CPU tensors go to the compiled CPU kernel
  (``xal_kernels.cpu_alignment``, Numba) for CAM/ROI alignment (to the torch path, with one warning,
  when Numba cannot be imported), and to ``xal_core.scoring`` for uncertainty and fusion, which are
  a handful of vectorised torch operations already;
* ``triton``: always the Triton kernels; on CPU tensors this needs Triton's interpreter
  (``TRITON_INTERPRET=1`` set before the kernels are first imported);
* ``numba``: always the compiled CPU kernel for alignment (CPU tensors only), as ``auto`` otherwise;
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
from functools import lru_cache
from types import ModuleType

import torch

from xal_core import scoring
from xal_core.scoring.fusion import DualScore
from xal_core.scoring.parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
)
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
    "warm_up",
]

BACKEND_ENV = "XAL_KERNELS"
BACKENDS = ("auto", "triton", "numba", "torch", "reference")
_warned_no_triton = False
_warned_no_numba = False


class KernelsUnavailableError(RuntimeError):
    """A kernel route (Triton or Numba) was forced but cannot run here."""


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


@lru_cache(maxsize=1)
def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def backend_for(tensor: object, *, op: str = "alignment") -> str:
    """``"triton"``, ``"numba"``, ``"torch"`` or ``"reference"`` for op ``op`` on an input living
    where ``tensor`` does. ``"numba"`` concerns CAM/ROI alignment only: for the other ops
    (``"uncertainty"``, ``"fusion"``) ``XAL_KERNELS=numba`` behaves as ``auto`` (see the module doc)."""
    global _warned_no_triton, _warned_no_numba
    choice = requested_backend()
    if choice == "numba" and op != "alignment":
        choice = "auto"
    on_cuda = isinstance(tensor, torch.Tensor) and tensor.is_cuda
    on_cpu = not on_cuda and (not isinstance(tensor, torch.Tensor) or tensor.device.type == "cpu")
    if choice == "auto" and on_cpu:
        if numba_available():
            return "numba"
        if not _warned_no_numba:
            warnings.warn(
                "xal_kernels: Numba cannot be imported, CPU tensors are scored by the slower torch "
                "path; install it with `pip install 'numba>=0.68.1,<0.69'`",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_no_numba = True
        return "torch"
    if choice == "numba":
        if not numba_available():
            raise KernelsUnavailableError(
                f"{BACKEND_ENV}=numba but Numba is not importable: `pip install 'numba>=0.68.1,<0.69'`"
            )
        if not on_cpu:
            raise KernelsUnavailableError(
                f"{BACKEND_ENV}=numba: the compiled CPU kernel takes CPU tensors, got {tensor.device} "
                "(unset it for the Triton kernels)"
            )
        return choice
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
def cam_alignment(
    features: torch.Tensor, weights: torch.Tensor, roi: Roi, *, threshold: float = DEFAULT_THRESHOLD
) -> AlignmentScores:
    """``xal_core.scoring.cam_alignment`` routed by device and ``XAL_KERNELS`` (same signature)."""
    route = backend_for(features)
    if route == "triton":
        return _op("triton_alignment", features).cam_alignment(features, weights, roi, threshold=threshold)
    if route == "numba":
        return importlib.import_module("xal_kernels.cpu_alignment").cam_alignment(features, weights, roi, threshold=threshold)
    if route == "reference":
        return scoring.alignment.cam_alignment_reference(features, weights, roi, threshold=threshold)
    return scoring.cam_alignment(features, weights, roi, threshold=threshold)


def uncertainty(logits: torch.Tensor, kind: str = DEFAULT_UNCERTAINTY) -> torch.Tensor:
    """``xal_core.scoring.uncertainty`` routed by device and ``XAL_KERNELS`` (same signature)."""
    if backend_for(logits, op="uncertainty") == "triton":
        return _op("triton_uncertainty", logits).uncertainty(logits, kind)
    return scoring.uncertainty(logits, kind)


def dual_score(
    uncertainty: torch.Tensor,
    misalignment: torch.Tensor | AlignmentScores,
    *,
    weight: float = DEFAULT_WEIGHT,
    method: str = DEFAULT_FUSION,
    missing_roi: str = DEFAULT_MISSING_ROI,
    invalid: torch.Tensor | None = None,
) -> DualScore:
    """``xal_core.scoring.dual_score`` routed by device and ``XAL_KERNELS`` (same signature)."""
    options = dict(weight=weight, method=method, missing_roi=missing_roi, invalid=invalid)
    if backend_for(uncertainty, op="fusion") == "triton":
        return _op("triton_uncertainty", uncertainty).dual_score(uncertainty, misalignment, **options)
    return scoring.dual_score(uncertainty, misalignment, **options)


def uncertainty_and_dual_score(
    logits: torch.Tensor,
    misalignment: torch.Tensor | AlignmentScores,
    *,
    kind: str = DEFAULT_UNCERTAINTY,
    weight: float = DEFAULT_WEIGHT,
    method: str = DEFAULT_FUSION,
    missing_roi: str = DEFAULT_MISSING_ROI,
    invalid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DualScore]:
    """``u = uncertainty(logits, kind)`` and ``dual_score(u, misalignment, ...)``; one fused kernel
    on the Triton route (weighted fusion)."""
    options = dict(weight=weight, method=method, missing_roi=missing_roi, invalid=invalid)
    if backend_for(logits, op="fusion") == "triton":
        return _op("triton_uncertainty", logits).uncertainty_and_dual_score(logits, misalignment, kind=kind, **options)
    u = scoring.uncertainty(logits, kind)
    return u, scoring.dual_score(u, misalignment, **options)


def warm_up() -> str:
    """Compile the kernel that CPU tensors are routed to now, not on the first call (a server does
    this before it reports SERVING); returns the route. Numba keeps the machine code on disk, so
    after the first process this is a load (~0.4 s), not a compilation (~4 s)."""
    route = backend_for(torch.zeros(1))
    if route == "numba":
        importlib.import_module("xal_kernels.cpu_alignment").warm_up()
    return route
