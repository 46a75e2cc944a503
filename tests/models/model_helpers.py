"""Small models and inputs shared by the model tests (a named module: the suite has one conftest)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xal_core.models import build_backbone


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Autouse (imported by each test module): one torch thread per test.

    CI runs the suite with two xdist workers on two cores; a second OpenMP thread per worker only
    spin-waits for a busy core and made the training tests ~8× slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_DENSENET = {"densenet_block_config": (2, 2, 2, 2), "densenet_init_features": 16, "densenet_growth_rate": 8}


def tiny_backbone(name: str, in_channels: int = 1, num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A seeded backbone in eval mode with BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    sizes = TINY_DENSENET if name == "densenet121" else {}
    model = build_backbone(name, in_channels, num_classes, **sizes)
    for module in model.modules():  # non-trivial running stats, so a wrong BN export would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    return model.eval()


class FlattenHeadNet(nn.Module):
    """A classifier without GAP: conv features, then flatten + linear (needs the autograd path)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, size: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * (size // 2) ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def reference_gradcam_weights(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM weights straight from the definition: mean over the grid of ∂z_c/∂A (hooks, no xal code)."""
    kept = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        kept["a"] = output

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x)
        logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    return kept["a"].grad.mean(dim=(2, 3))


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of ``[B, H, W]`` maps (the contract's, for non-constant maps)."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (maps - low) / (high - low)
