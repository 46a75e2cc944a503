"""``xal export``: turn a training checkpoint into a self-describing ONNX or TorchScript model file.

The file carries the class names, input size, channels, intensity normalisation and target layer
(see ``docs/models.md``), so the scoring service needs nothing but the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Copies of xal_core.models.export's constants (a test keeps them equal): importing xal_core.models
# pulls in MONAI, which would add seconds to every `xal` command, so it is imported only in `run`.
FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="export a checkpoint to ONNX or TorchScript with CAM outputs")
    parser.add_argument("checkpoint", type=Path, help="an xal checkpoint (.pt or .safetensors) written by training")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default onnx)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model file")
    parser.add_argument(
        "--onnx-exporter", choices=ONNX_EXPORTERS, default="auto",
        help="auto: torch's dynamo exporter, the legacy one if it fails (default); dynamo: no fallback; legacy only",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from xal_core.models import ExplainableModel, ModelMetadata, export, load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    model = ExplainableModel(checkpoint.build())
    metadata = ModelMetadata(
        class_names=checkpoint.class_names,
        preprocessing=checkpoint.preprocessing,
        target_layer=model.target_layer,
        architecture=checkpoint.architecture.to_dict(),
    )
    result = export(model, args.out, args.format, metadata=metadata, onnx_exporter=args.onnx_exporter)
    console = Console()
    note = f" (dynamo exporter failed: {result.fallback_reason})" if result.fallback_reason else ""
    pre = checkpoint.preprocessing
    console.print(
        f"wrote {result.path} ({result.format}, exporter {result.exporter}{note}): "
        f"{checkpoint.architecture.name}, {pre.channels}×{pre.input_size[0]}×{pre.input_size[1]} input, "
        f"{len(checkpoint.class_names)} classes, target layer {model.target_layer}"
    )
    return 0
