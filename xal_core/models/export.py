"""Export an ``ExplainableModel`` to ONNX or TorchScript, with its metadata inside the file.

The exported graph takes ``image [B, C, H, W]`` (already normalised, see ``ModelMetadata.normalise``)
and returns ``logits [B,K]``, ``features [B,C',h,w]`` and ``cam_weights [B,C']`` for the predicted
class: the analytic Grad-CAM weights ``W[argmax, :] / (h·w)`` are a gather in the graph, so the
runtime needs no autograd. The batch axis is dynamic; ``H, W`` are fixed to ``input_shape``.

ONNX goes through torch's dynamo exporter (onnxscript); only if that fails is the legacy
TorchScript-based exporter tried, and ``ExportResult.exporter`` (also stored as ``xal.exporter``)
says which one wrote the file.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .explainable import ExplainableModel
from .metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata, Preprocessing

FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours its exporter errors
TORCHSCRIPT_METADATA_FILE = "xal_metadata.json"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    exporter: str
    metadata: ModelMetadata
    fallback_reason: str = ""


class _ArgmaxGraph(nn.Module):
    """The exported function: image → (logits, features, cam_weights), target class = argmax."""

    def __init__(self, model: ExplainableModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        return self.model(image)


def export(
    model: nn.Module,
    path: str | Path,
    format: str = "onnx",
    input_shape: tuple[int, int, int] | None = None,
    *,
    metadata: ModelMetadata | None = None,
    class_names: tuple[str, ...] | None = None,
    opset: int = 18,
    onnx_exporter: str = "auto",
) -> ExportResult:
    """Write ``model`` to ``path`` as ONNX or TorchScript with xal metadata embedded.

    Args:
        model: an analytic ``ExplainableModel`` or a backbone with a GAP + linear head.
        format: ``"onnx"`` or ``"torchscript"``.
        input_shape: ``(C, H, W)``; defaults to the metadata's preprocessing.
        metadata: class names, preprocessing, ...; built from ``input_shape`` when not given.
        class_names: used when ``metadata`` is not given (default ``class_0 … class_{K-1}``).
        opset: the ONNX opset.
        onnx_exporter: ``"auto"`` (dynamo, the legacy exporter if dynamo fails), ``"dynamo"`` (no
            fallback: its error propagates) or ``"legacy"`` (the TorchScript-based exporter only).
    """
    if format not in FORMATS:
        raise ValueError(f"export: format must be one of {FORMATS}, got {format!r}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(f"export: onnx_exporter must be one of {ONNX_EXPORTERS}, got {onnx_exporter!r}")
    explainable = model if isinstance(model, ExplainableModel) else ExplainableModel(model)
    if not explainable.analytic:
        raise ValueError(
            f"export: target layer {explainable.target_layer!r} needs autograd for its Grad-CAM weights, which an "
            "exported graph cannot run; export the default target layer of a GAP + linear backbone"
        )
    if input_shape is None:
        if metadata is None:
            raise ValueError("export: give input_shape=(C, H, W) or metadata with the preprocessing")
        input_shape = (metadata.channels, *metadata.input_size)
    channels, height, width = (int(v) for v in input_shape)
    if metadata is None:
        num_classes = explainable.linear.out_features
        names = tuple(class_names) if class_names else tuple(f"class_{k}" for k in range(num_classes))
        config = getattr(explainable.backbone, "xal_config", None)
        metadata = ModelMetadata(
            class_names=names,
            preprocessing=Preprocessing((height, width), channels),
            target_layer=explainable.target_layer,
            architecture=config.to_dict() if config is not None else {},
        )
    if (metadata.channels, *metadata.input_size) != (channels, height, width):
        raise ValueError(
            f"export: input_shape {(channels, height, width)} differs from the metadata's "
            f"{(metadata.channels, *metadata.input_size)}"
        )
    if len(metadata.class_names) != explainable.linear.out_features:
        raise ValueError(
            f"export: {len(metadata.class_names)} class names for a model with {explainable.linear.out_features} logits"
        )
    graph = _ArgmaxGraph(explainable).eval()
    example = torch.randn(2, channels, height, width)  # batch 2: a batch of 1 can get specialised away
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = explainable.training
    explainable.eval()
    try:
        if format == "onnx":
            exporter, reason = _export_onnx(graph, example, path, opset, onnx_exporter)
            metadata = replace(metadata, exporter=exporter)
            _write_onnx_metadata(path, metadata)
        else:
            exporter, reason = "jit.trace", ""
            metadata = replace(metadata, exporter=exporter)
            _export_torchscript(graph, example, path, metadata)
    finally:
        explainable.train(was_training)
    return ExportResult(path, format, exporter, metadata, reason)


def _export_onnx(graph: nn.Module, example: torch.Tensor, path: Path, opset: int, which: str) -> tuple[str, str]:
    if which == "legacy":
        _export_onnx_legacy(graph, example, path, opset)
        return "torchscript-legacy", ""
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs one warning per torchvision op it cannot register; xal does not use torchvision.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"image": {0: batch}},
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        program.save(str(path), external_data=False)
        return "dynamo", ""
    except Exception as error:  # the dynamo exporter fails in many ways; the legacy one is the fallback
        if which == "dynamo":
            raise
        first_line = _ANSI.sub("", str(error)).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {first_line}"
    finally:
        registration_log.setLevel(level)
    _export_onnx_legacy(graph, example, path, opset)
    return "torchscript-legacy", reason


def _export_onnx_legacy(graph: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
            opset_version=opset,
        )


def _write_onnx_metadata(path: Path, metadata: ModelMetadata) -> None:
    import onnx

    proto = onnx.load(str(path))
    outputs = [output.name for output in proto.graph.output]
    if tuple(outputs) != OUTPUT_NAMES:
        raise ValueError(f"export: {path} has outputs {outputs}, expected {list(OUTPUT_NAMES)}")
    existing = {prop.key for prop in proto.metadata_props}
    for key, value in metadata.to_strings().items():
        if key in existing:
            raise ValueError(f"export: {path} already carries metadata key {key!r}")
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _export_torchscript(graph: nn.Module, example: torch.Tensor, path: Path, metadata: ModelMetadata) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    files = {TORCHSCRIPT_METADATA_FILE: json.dumps(metadata.to_strings())}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; see docs/models.md
        torch.jit.save(traced, buffer, _extra_files=files)
    path.write_bytes(buffer.getvalue())
