"""2D classification backbones, built by name: MONAI's, and xal's small CNN for 64² inputs.

xal needs a classifier whose last spatial layer feeds global average pooling and one linear layer:
for that head the Grad-CAM weights are analytic (see ``explainable.py``). MONAI's DenseNet121 and
ResNets have that head, and so has ``smallcnn`` (``smallcnn.py``: stride 8, an 8×8 CAM at 64²). MONAI's ResNet defaults to a stride-1 stem (``conv1_t_stride=1``), which costs
4× the compute of the ImageNet design at 224²; xal always builds the stride-2, 7×7 stem.

Nothing is downloaded: weights come only from a local path (``weights.load_weights``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from .weights import load_weights

ARCHITECTURES = ("densenet121", "resnet10", "resnet18", "resnet34", "resnet50", "smallcnn")


@dataclass(frozen=True)
class BackboneConfig:
    """What is needed to rebuild a backbone: recorded in checkpoints and export metadata.

    Attributes:
        name: one of ``ARCHITECTURES``.
        in_channels: image channels (1 for grey-scale scans, 3 for RGB-like inputs).
        num_classes: K, the number of logits.
        densenet_block_config / densenet_init_features / densenet_growth_rate: DenseNet121 sizes;
            smaller values give a cheap DenseNet of the same design (used by the tests).
        output_stride: input pixels per cell of the last feature map, i.e. of the Grad-CAM grid:
            32 (the architecture's standard design) or, for the ResNets, 16 (the stem's max-pool
            left out: 4× the compute of the later stages, and a grid twice as fine each way). At
            64×64 inputs 32 gives the ResNets a 2×2 CAM, too coarse to say where in the image the
            model looks. ``smallcnn``'s standard design has stride 8 (an 8×8 CAM at 64²): it takes
            the default only, so that the CLI's and the recipe's default stays valid for it.
        smallcnn_width: channels of ``smallcnn``'s first stage (doubled twice); smaller values give
            a cheaper model of the same design (used by the tests). Recorded only when changed.
    """

    name: str
    in_channels: int
    num_classes: int
    densenet_block_config: tuple[int, ...] = (6, 12, 24, 16)
    densenet_init_features: int = 64
    densenet_growth_rate: int = 32
    output_stride: int = 32
    smallcnn_width: int = 32

    def __post_init__(self) -> None:
        if self.name not in ARCHITECTURES:
            raise ValueError(f"backbone: unknown architecture {self.name!r}; expected one of {ARCHITECTURES}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"backbone {self.name}: in_channels must be 1 or 3, got {self.in_channels}")
        if self.num_classes < 2:
            raise ValueError(f"backbone {self.name}: num_classes must be >= 2, got {self.num_classes}")
        if self.output_stride not in (16, 32):
            raise ValueError(f"backbone {self.name}: output_stride must be 32 or 16, got {self.output_stride}")
        if self.output_stride == 16 and not self.name.startswith("resnet"):
            raise ValueError(f"backbone {self.name}: output_stride 16 is available for the ResNets only")
        if self.smallcnn_width < 1:
            raise ValueError(f"backbone {self.name}: smallcnn_width must be >= 1, got {self.smallcnn_width}")
        object.__setattr__(self, "densenet_block_config", tuple(int(v) for v in self.densenet_block_config))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["densenet_block_config"] = list(self.densenet_block_config)
        if self.output_stride == 32:  # recorded only when it differs, so earlier records read the same
            del data["output_stride"]
        if self.smallcnn_width == 32:
            del data["smallcnn_width"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> BackboneConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _nets():
    """MONAI's networks, imported on first use: importing MONAI costs ~2 s, which every process
    that only reads metadata (the CLI, a service or Ray worker starting) would otherwise pay."""
    from monai.networks import nets

    return nets


def _densenet(config: BackboneConfig) -> nn.Module:
    return _nets().DenseNet(
        spatial_dims=2,
        in_channels=config.in_channels,
        out_channels=config.num_classes,
        init_features=config.densenet_init_features,
        growth_rate=config.densenet_growth_rate,
        block_config=config.densenet_block_config,
    )


def _resnet(factory: str) -> Callable[[BackboneConfig], nn.Module]:
    def build(config: BackboneConfig) -> nn.Module:
        return getattr(_nets(), factory)(
            spatial_dims=2,
            n_input_channels=config.in_channels,
            num_classes=config.num_classes,
            conv1_t_size=7,
            conv1_t_stride=2,
            no_max_pool=config.output_stride == 16,
        )

    return build


def _smallcnn(config: BackboneConfig) -> nn.Module:
    from .smallcnn import SmallCNN

    return SmallCNN(config.in_channels, config.num_classes, width=config.smallcnn_width)


_BUILDERS: dict[str, Callable[[BackboneConfig], nn.Module]] = {
    "densenet121": _densenet,
    "resnet10": _resnet("resnet10"),
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
    "smallcnn": _smallcnn,
}


def build_backbone(
    name: str | BackboneConfig,
    in_channels: int = 1,
    num_classes: int = 2,
    *,
    weights: str | Path | None = None,
    **sizes,
) -> nn.Module:
    """A 2D backbone, randomly initialised or with weights from a local file.

    Args:
        name: an architecture name or a full ``BackboneConfig``.
        weights: a local ``.pt``/``.safetensors`` file (state dict or xal checkpoint); never a hub.
            A file for another architecture raises ``ValueError`` naming it.
        sizes: DenseNet sizes (``densenet_block_config`` …), for small test models.

    The returned module carries its ``BackboneConfig`` as ``.xal_config`` so that checkpoints and
    exports can record it.
    """
    config = name if isinstance(name, BackboneConfig) else BackboneConfig(name, in_channels, num_classes, **sizes)
    model = _BUILDERS[config.name](config)
    model.xal_config = config
    if weights is not None:
        load_weights(model, weights)
    return model
