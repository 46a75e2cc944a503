"""ONNX Runtime backend: CUDA execution provider when usable, the CPU provider otherwise.

Device residency. On the CPU provider ``session.run`` returns NumPy arrays and ``torch.from_numpy``
wraps them without a copy. On the CUDA provider this implementation still lets ONNX Runtime copy the
outputs to host memory (``session.run``), so the features make one device → host trip per batch.
Keeping them on the GPU for the fused scoring kernel is an IO-binding change confined to
``OnnxRuntime.run``: ``binding = session.io_binding()``, bind the input from the torch CUDA tensor's
pointer, ``binding.bind_output(name, "cuda")`` for the three outputs, ``session.run_with_iobinding``,
then hand each ``OrtValue`` to torch through DLPack. It is not implemented because it cannot be
tested on a CPU-only CI host; ``device`` says which provider runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xal_core.models.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata

from .base import RuntimeOutputs, check_images


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    # onnxruntime-gpu lists the CUDA provider even on hosts without a GPU; ask torch whether one exists.
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntime:
    """An exported ONNX model with its xal metadata, run by ONNX Runtime."""

    def __init__(self, path: str | Path, *, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers or _providers())
        except Exception as error:  # ONNX Runtime raises its own exception types for unreadable files
            raise ValueError(f"{self.path}: not a loadable ONNX model: {str(error).splitlines()[0]}") from error
        outputs = [output.name for output in self.session.get_outputs()]
        if sorted(outputs) != sorted(OUTPUT_NAMES):
            raise ValueError(f"{self.path}: outputs are {outputs}, an xal model needs {list(OUTPUT_NAMES)}")
        inputs = [node.name for node in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ValueError(f"{self.path}: inputs are {inputs}, an xal model takes one input {INPUT_NAME!r}")
        self.metadata = ModelMetadata.from_strings(
            dict(self.session.get_modelmeta().custom_metadata_map), source=str(self.path)
        )
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def run(self, images: np.ndarray | torch.Tensor) -> RuntimeOutputs:
        images = check_images(images, self.metadata, self.path)
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        feed = {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)}
        values = self.session.run(list(OUTPUT_NAMES), feed)
        return RuntimeOutputs(*(torch.from_numpy(value) for value in values))

    def __repr__(self) -> str:
        return f"OnnxRuntime({str(self.path)!r}, device={self.device!r})"
