"""``SmallCNN``: a 7-layer conv-BN-ReLU classifier sized for 64×64 inputs, with a GAP + linear head.

Why a backbone of xal's own beside MONAI's: at 64×64 the ImageNet-style ResNets have a 2×2 (stride
32) or 4×4 (stride 16) Grad-CAM grid, too coarse to say whether the model looks at a lesion or at a
marker in the corner (docs/results/claim.md), and 11–20 M parameters for a few hundred labels make
rounds unstable. ``SmallCNN`` has a total stride of 8 (an 8×8 CAM grid at 64², 28×28 at 224²) and
~0.5 M parameters at the default width.

Layout (``w`` = ``width``, 32 by default)::

    [conv3×3-BN-ReLU ×2, max-pool 2] at w, 2w, 4w channels   (3 stages, stride 8)
    conv3×3-BN-ReLU at 4w                                     (the Grad-CAM target layer's last op)
    global average pooling → one linear layer

``features`` is the Grad-CAM target layer; the head is global average pooling followed by ``fc``,
so ``head.split_gap_linear`` splits it and the Grad-CAM weights stay analytic (``W[c] / (h·w)``)
and inside exported ONNX / TorchScript graphs, as for the MONAI backbones.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN"]


def _block(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No bias before BatchNorm (it would be cancelled); a fresh, not in-place ReLU so the trunk's
    # output tensor is safe to reuse (Grad-CAM reads it twice: pooled for the logits, and as the map).
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class SmallCNN(nn.Module):
    """``x [B, C_in, H, W] → logits [B, K]``; ``features(x)`` is the ``[B, 4w, H/8, W/8]`` CAM layer.

    Args:
        in_channels: image channels.
        num_classes: K.
        width: channels of the first stage (doubled at each of the next two stages).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage_width in (width, 2 * width, 4 * width):
            layers += [*_block(channels, stage_width), *_block(stage_width, stage_width), nn.MaxPool2d(2)]
            channels = stage_width
        layers += _block(channels, channels)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
