"""What every model runtime offers, and the input checks they share.

A runtime turns an image batch ``[B, C, H, W]`` (NumPy or torch, already normalised with
``metadata.normalise``) into ``RuntimeOutputs(logits [B,K], features [B,C',h,w], cam_weights [B,C'])``
as float32 torch tensors, the inputs of ``xal_core.acquisition.score_batch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from ..metadata import ModelMetadata


class RuntimeOutputs(NamedTuple):
    logits: torch.Tensor
    features: torch.Tensor
    cam_weights: torch.Tensor


class Runtime(Protocol):
    path: Path
    metadata: ModelMetadata
    device: str

    def run(self, images: np.ndarray | torch.Tensor) -> RuntimeOutputs: ...


def check_images(images: np.ndarray | torch.Tensor, metadata: ModelMetadata, path: Path) -> np.ndarray | torch.Tensor:
    """Reject a batch the exported graph was not built for, naming the file and the mismatch."""
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise ValueError(f"{path}: images must be a NumPy array or a torch tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(f"{path}: images must be [B, C, H, W], got shape {shape}")
    if shape[0] < 1:
        raise ValueError(f"{path}: empty batch (shape {shape})")
    if shape[1] != metadata.channels:
        raise ValueError(f"{path}: model takes {metadata.channels} channel(s), images have {shape[1]} (shape {shape})")
    if tuple(shape[2:]) != metadata.input_size:
        raise ValueError(
            f"{path}: model takes {metadata.input_size[0]}×{metadata.input_size[1]} images, got "
            f"{shape[2]}×{shape[3]}; resize them first"
        )
    if isinstance(images, np.ndarray) and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{path}: images must be floating point, got {images.dtype}")
    if isinstance(images, torch.Tensor) and not images.is_floating_point():
        raise ValueError(f"{path}: images must be floating point, got {images.dtype}")
    return images
