"""``xal export``: turn a training checkpoint into a self-describing ONNX or TorchScript model file.

The file carries the class names, input size, channels, intensity normalisation and target layer
(see ``docs/models.md``), so the scoring service needs nothing but the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xal_core.models import ExplainableModel, export, load_checkpoint
from xal_core.models.export import FORMATS, ONNX_EXPORTERS

from .defaults import default_of


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="export a checkpoint to ONNX or TorchScript with CAM outputs")
    parser.add_argument("checkpoint", type=Path, help="an xal checkpoint (.pt or .safetensors) written by training")
    parser.add_argument("--format", choices=FORMATS, default=default_of(export, "format"),
                        help=f"output format (default {default_of(export, 'format')})")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model file")
    parser.add_argument(
        "--onnx-exporter", choices=ONNX_EXPORTERS, default=default_of(export, "onnx_exporter"),
        help="auto: torch's dynamo exporter, the legacy one if it fails (default); dynamo: no fallback; legacy only",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    checkpoint = load_checkpoint(args.checkpoint)
    model = ExplainableModel(checkpoint.build())
    result = export(model, args.out, args.format, metadata=checkpoint.metadata(model.target_layer),
                    onnx_exporter=args.onnx_exporter)
    console = Console()
    note = f" (dynamo exporter failed: {result.fallback_reason})" if result.fallback_reason else ""
    pre = checkpoint.preprocessing
    console.print(
        f"wrote {result.path} ({result.format}, exporter {result.exporter}{note}): "
        f"{checkpoint.architecture.name}, {pre.channels}×{pre.input_size[0]}×{pre.input_size[1]} input, "
        f"{len(checkpoint.class_names)} classes, target layer {model.target_layer}"
    )
    return 0
