"""ONNX Runtime backend: CUDA execution provider when usable, the CPU provider otherwise.

Device residency. With IO binding (the default on the CUDA provider) ``run`` allocates the three
outputs as torch tensors on the session's device and binds their memory to the graph's outputs, so
ONNX Runtime writes the features straight into tensors the fused scoring kernel can read in place:
no device → host copy. Without it (the default on the CPU provider) ``session.run`` returns NumPy
arrays that ``torch.from_numpy`` wraps without a copy. ``io_binding=True`` on the CPU provider runs
the binding path too, which is how CI tests it; the CUDA variant differs only in the device named
in the binding and has not been run on a GPU by the tests.

Memory on the CPU provider. ONNX Runtime's CPU arena keeps, for the life of the session, the
largest working set any run needed, and a scoring job runs whole pool chunks (1 024 images by
default): ~1 GB of activations for a ResNet-10 at 64², held by every live session. A long-lived
server loads a new model every active-learning round, so it grew by that much per model (4.6 GB
after 14 rounds of two arms). Here the CPU provider runs without the arena and a batch is run
``max_batch`` images at a time (64 by default on the CPU provider): a run's buffers are bounded
and returned when it ends, at no measurable cost in throughput (convolutions run image by image
on the CPU provider anyway). The outputs are concatenated, so callers still get one batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata
from .base import RuntimeOutputs, check_images
from .threads import ThreadSplit

CPU_MAX_BATCH = 64  # images per run on the CPU provider (bounds a run's buffers; see the module doc)


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    # onnxruntime-gpu lists the CUDA provider even on hosts without a GPU; ask torch whether one exists.
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntime:
    """An exported ONNX model with its xal metadata, run by ONNX Runtime.

    Args:
        path: the ``.onnx`` file written by ``xal_core.models.export``.
        providers: ONNX Runtime execution providers (default: CUDA when usable, else CPU).
        threads: intra-op threads (default on the CPU provider: ``ThreadSplit().runtime()``, the
            runtime's share of the cores beside the alignment kernel; on CUDA: ONNX Runtime's choice).
        io_binding: write outputs into torch tensors on the session's device (default: on CUDA).
        max_batch: images per ONNX Runtime run (default: 64 on the CPU provider, all on CUDA).
        memory_arena: keep ONNX Runtime's memory arena (default: only on CUDA, see the module doc).
        spin: let the intra-op threads spin while they wait for work (ONNX Runtime's
            ``session.intra_op.allow_spinning``; default: ONNX Runtime's own, spinning). A spinning
            thread holds its core between operations, where a scoring thread that shares the cores
            could have run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        io_binding: bool | None = None,
        max_batch: int | None = None,
        memory_arena: bool | None = None,
        spin: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        providers = providers or _providers()
        on_cpu = providers[0] == "CPUExecutionProvider"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = (not on_cpu) if memory_arena is None else bool(memory_arena)
        if threads is None and on_cpu:
            threads = ThreadSplit().runtime()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.threads = threads
        if spin is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.spin = spin
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
        self.max_batch = max_batch if max_batch is not None else (CPU_MAX_BATCH if on_cpu else None)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
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
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self._item_shapes = self._output_item_shapes() if self.io_binding else {}

    def run(self, images: np.ndarray | torch.Tensor) -> RuntimeOutputs:
        """``(logits, features, cam_weights)`` as float32 torch tensors on ``self.device``."""
        images = check_images(images, self.metadata, self.path)
        step = self.max_batch or len(images)
        if len(images) <= step:
            return self._run_once(images)
        parts = [self._run_once(images[start:start + step]) for start in range(0, len(images), step)]
        return RuntimeOutputs(*(torch.cat(outputs) for outputs in zip(*parts, strict=True)))

    def _run_once(self, images: np.ndarray | torch.Tensor) -> RuntimeOutputs:
        if self.io_binding:
            return self._run_bound(torch.as_tensor(images))
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        feed = {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)}
        values = self.session.run(list(OUTPUT_NAMES), feed)
        return RuntimeOutputs(*(torch.from_numpy(value) for value in values))

    def _run_bound(self, images: torch.Tensor) -> RuntimeOutputs:
        device = torch.device(self.device, 0) if self.device == "cuda" else torch.device("cpu")
        x = images.detach().to(device=device, dtype=torch.float32).contiguous()
        batch = x.shape[0]
        outputs = {
            name: torch.empty((batch, *shape), dtype=torch.float32, device=device)
            for name, shape in self._item_shapes.items()
        }
        index = device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, device.type, index, np.float32, tuple(x.shape), x.data_ptr())
        for name, tensor in outputs.items():
            binding.bind_output(name, device.type, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the input copy must be done before ORT reads it
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return RuntimeOutputs(*(outputs[name] for name in OUTPUT_NAMES))

    def _output_item_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-item output shapes (all but the batch axis), from the graph or from a probe batch of one."""
        declared = {output.name: output.shape[1:] for output in self.session.get_outputs()}
        if all(isinstance(d, int) for shape in declared.values() for d in shape):
            return {name: tuple(shape) for name, shape in declared.items()}
        probe = np.zeros((1, self.metadata.channels, *self.metadata.input_size), np.float32)
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: probe})
        return {name: tuple(value.shape[1:]) for name, value in zip(OUTPUT_NAMES, values, strict=True)}

    def __repr__(self) -> str:
        return f"OnnxRuntime({str(self.path)!r}, device={self.device!r}, io_binding={self.io_binding})"
