"""Backbones, the explainable wrapper (logits + features + Grad-CAM weights) and export.

>>> import torch
>>> from xal_core.models import ExplainableModel, build_backbone
>>> model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=3)).eval()
>>> logits, features, cam_weights = model(torch.randn(2, 1, 64, 64))
>>> tuple(logits.shape), tuple(features.shape), tuple(cam_weights.shape)
((2, 3), (2, 512, 2, 2), (2, 512))
"""

from .backbones import ARCHITECTURES, BackboneConfig, build_backbone
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .explainable import ExplainableModel
from .export import FORMATS, TORCHSCRIPT_METADATA_FILE, ExportResult, export
from .head import GapLinearSplit, split_gap_linear
from .metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata, Preprocessing, xal_version
from .weights import load_weights

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "TORCHSCRIPT_METADATA_FILE",
    "BackboneConfig",
    "Checkpoint",
    "ExplainableModel",
    "ExportResult",
    "GapLinearSplit",
    "ModelMetadata",
    "Preprocessing",
    "build_backbone",
    "export",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "split_gap_linear",
    "xal_version",
]
