"""Deprecated home of the model runtimes, kept for one release: they moved to
``xal_core.models.runtime`` (beside ``export``, which writes what they read). Import from there."""

from __future__ import annotations

import warnings

from xal_core.models.runtime import (  # noqa: F401  (re-exported)
    OnnxRuntime,
    Runtime,
    RuntimeOutputs,
    TorchScriptRuntime,
    check_images,
    load,
)

__all__ = ["OnnxRuntime", "Runtime", "RuntimeOutputs", "TorchScriptRuntime", "check_images", "load"]

warnings.warn("xal_service.runtime moved to xal_core.models.runtime; this alias goes in the next release",
              DeprecationWarning, stacklevel=2)
