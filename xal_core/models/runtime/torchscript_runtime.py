"""TorchScript backend: ``torch.jit.load`` with the metadata from the file's ``_extra_files``.

TorchScript is deprecated from torch 2.10 on (``torch.jit`` warns on every call); xal keeps it as the
second format for hosts without ONNX Runtime and silences that one known warning. ONNX is the
primary format of the service.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..export import TORCHSCRIPT_METADATA_FILE
from ..metadata import ModelMetadata
from .base import RuntimeOutputs, check_images


class TorchScriptRuntime:
    """An exported TorchScript model with its xal metadata; runs on CUDA when torch has a GPU."""

    def __init__(self, path: str | Path, *, device: str | None = None) -> None:
        self.path = Path(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        files = {TORCHSCRIPT_METADATA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=files).eval()
        except Exception as error:  # torch raises RuntimeError/ValueError/... for corrupt archives
            raise ValueError(f"{self.path}: not a loadable TorchScript model: {str(error).splitlines()[0]}") from error
        if not files[TORCHSCRIPT_METADATA_FILE]:
            raise ValueError(f"{self.path}: TorchScript file without {TORCHSCRIPT_METADATA_FILE} (not written by xal export)")
        try:
            values = json.loads(files[TORCHSCRIPT_METADATA_FILE])
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path}: unreadable {TORCHSCRIPT_METADATA_FILE}: {error}") from error
        self.metadata = ModelMetadata.from_strings(values, source=str(self.path))

    def run(self, images: np.ndarray | torch.Tensor) -> RuntimeOutputs:
        images = check_images(images, self.metadata, self.path)
        batch = torch.as_tensor(images).to(self.device, torch.float32)
        with torch.inference_mode():
            outputs = self.module(batch)
        if not isinstance(outputs, tuple) or len(outputs) != 3:
            raise ValueError(f"{self.path}: the module must return (logits, features, cam_weights)")
        return RuntimeOutputs(*outputs)

    def __repr__(self) -> str:
        return f"TorchScriptRuntime({str(self.path)!r}, device={self.device!r})"
