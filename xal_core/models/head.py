"""Split a backbone into a feature trunk and a GAP + linear head.

For ``logits = W · mean_{i,j} A[:, :, i, j] + b`` the Grad-CAM weights are ``W[c, :] / (h·w)``
exactly (docs/contract.md), so a model that can be split this way needs no backward pass and its CAM
weights can live inside an exported graph. The split shares parameters with the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class GapLinearSplit:
    """``trunk(x)`` gives the target layer's activations ``[B, C, h, w]``; ``linear`` the logits of their mean."""

    trunk: nn.Module
    linear: nn.Linear
    target_layer: str


def split_gap_linear(backbone: nn.Module) -> GapLinearSplit | None:
    """The trunk/head split of a known GAP + linear backbone, or ``None`` for any other model."""
    from .smallcnn import SmallCNN

    if isinstance(backbone, SmallCNN):  # checked first: it needs no MONAI import
        return GapLinearSplit(backbone.features, backbone.fc, "features")
    from monai.networks import nets  # deferred: see backbones._nets

    if isinstance(backbone, nets.DenseNet):
        layers = backbone.class_layers
        if isinstance(layers.pool, nn.AdaptiveAvgPool2d) and isinstance(layers.out, nn.Linear):
            # The head's ReLU belongs to the features: Grad-CAM looks at what the pooling sees.
            # A fresh, not in-place ReLU keeps the trunk's output safe to reuse.
            return GapLinearSplit(nn.Sequential(backbone.features, nn.ReLU()), layers.out, "class_layers.relu")
    resnet_head = isinstance(backbone, nets.ResNet) and isinstance(backbone.fc, nn.Linear)
    if resnet_head and isinstance(backbone.avgpool, nn.AdaptiveAvgPool2d):
        stem = [backbone.conv1, backbone.bn1, backbone.act]
        if not backbone.no_max_pool:
            stem.append(backbone.maxpool)
        body = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        return GapLinearSplit(nn.Sequential(*stem, *body), backbone.fc, "layer4")
    return None
