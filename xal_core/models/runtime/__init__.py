"""Runtimes of exported models: an exported file in, ``(logits, features, cam_weights)`` out.

They live beside ``export`` because they read exactly what it writes, and every layer that scores
uses them: the loop's in-process scorer, the service's job worker and the Ray workers.

``load(path)`` picks the backend from the file itself: a ZIP archive is TorchScript, anything else is
read as ONNX. Both read the xal metadata embedded by ``xal_core.models.export`` (``.metadata``), so
a model file is all a scorer needs.

>>> from xal_core.models.runtime import load      # doctest: +SKIP
>>> runtime = load("model.onnx")                  # doctest: +SKIP
>>> logits, features, cam_weights = runtime.run(runtime.metadata.normalise(images))  # doctest: +SKIP
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from .base import Runtime, RuntimeOutputs, check_images
from .onnx_runtime import OnnxRuntime
from .threads import ThreadSplit, usable_cores
from .torchscript_runtime import TorchScriptRuntime

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")

__all__ = ["OnnxRuntime", "Runtime", "RuntimeOutputs", "ThreadSplit", "TorchScriptRuntime", "check_images", "load",
           "usable_cores"]


def load(path: str | Path, **options) -> OnnxRuntime | TorchScriptRuntime:
    """Open an exported xal model (ONNX or TorchScript); a bad file raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty model file")
    if zipfile.is_zipfile(path):
        return TorchScriptRuntime(path, **options)
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        raise ValueError(f"{path}: not a TorchScript ZIP archive (truncated or corrupted?)")
    return OnnxRuntime(path, **options)
