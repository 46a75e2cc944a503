"""Model metadata that travels inside an exported file, so the service needs nothing else.

Stored as string key/value pairs: ONNX ``metadata_props`` and one JSON file in TorchScript's
``_extra_files``. Keys (all prefixed ``xal.``):

==========================  =====================================================================
``xal.class_names``         JSON list of K class names, in logit order
``xal.input_size``          JSON ``[H, W]``: the size the graph was exported for
``xal.channels``            input channels (1 or 3)
``xal.normalisation``       JSON ``{"mean": [...], "std": [...]}`` per channel; the graph expects
                            ``(x - mean) / std``, applied by the caller (``ModelMetadata.normalise``)
``xal.target_layer``        the backbone layer whose activations are ``features``
``xal.architecture``        JSON ``BackboneConfig`` (``{}`` when unknown)
``xal.outputs``             JSON ``["logits", "features", "cam_weights"]``
``xal.cam_target``          ``argmax``: CAM weights are for the predicted class
``xal.exporter``            which exporter wrote the file (``dynamo``, ``torchscript-legacy``, ``jit.trace``)
``xal.version``             the xal version that exported it
==========================  =====================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata as _importlib_metadata

import torch

OUTPUT_NAMES = ("logits", "features", "cam_weights")
INPUT_NAME = "image"


def xal_version() -> str:
    try:
        return _importlib_metadata.version("xal-ml")
    except _importlib_metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


@dataclass(frozen=True)
class Preprocessing:
    """What an image must look like before the model sees it.

    Attributes:
        input_size: ``(H, W)`` in pixels.
        channels: 1 or 3.
        mean, std: per-channel intensity normalisation ``(x - mean) / std`` (one value per channel).
    """

    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"preprocessing: input_size must be (H, W) with positive values, got {self.input_size}")
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) == 1:
            mean = mean * self.channels
        if len(std) == 1:
            std = std * self.channels
        if len(mean) != self.channels or len(std) != self.channels:
            raise ValueError(f"preprocessing: mean and std need 1 or {self.channels} values, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"preprocessing: std must be positive, got {std}")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict:
        return {"input_size": list(self.input_size), "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(tuple(data["input_size"]), int(data["channels"]), tuple(data["mean"]), tuple(data["std"]))


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the service needs to run an exported model and interpret its outputs."""

    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    target_layer: str
    architecture: dict = field(default_factory=dict)
    exporter: str = ""
    version: str = field(default_factory=xal_version)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    @property
    def channels(self) -> int:
        return self.preprocessing.channels

    def normalise(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(x - mean) / std`` per channel, the intensity normalisation the model was trained with.

        ``out``: a tensor of ``images``' shape and dtype to write into (a pipeline reuses its buffers:
        a fresh 19 MB tensor per 32 × 224² batch is handed back to the OS and faulted in again each
        time). The division is done in place on the difference either way: one temporary, not two.
        The values are those of ``(images - mean) / std`` bit for bit.
        """
        mean = torch.tensor(self.preprocessing.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.tensor(self.preprocessing.std, dtype=images.dtype, device=images.device)[:, None, None]
        if not images.is_floating_point():
            return (images - mean) / std  # integer images: true division gives a new float tensor
        if out is None:
            return (images - mean).div_(std)
        if out.shape != images.shape or out.dtype != images.dtype or out.device != images.device:
            raise ValueError(f"normalise: out is {out.dtype} {tuple(out.shape)} on {out.device}, images "
                             f"{images.dtype} {tuple(images.shape)} on {images.device}")
        return torch.sub(images, mean, out=out).div_(std)

    def to_strings(self) -> dict[str, str]:
        pre = self.preprocessing
        return {
            "xal.class_names": json.dumps(list(self.class_names)),
            "xal.input_size": json.dumps(list(pre.input_size)),
            "xal.channels": str(pre.channels),
            "xal.normalisation": json.dumps({"mean": list(pre.mean), "std": list(pre.std)}),
            "xal.target_layer": self.target_layer,
            "xal.architecture": json.dumps(self.architecture),
            "xal.outputs": json.dumps(list(OUTPUT_NAMES)),
            "xal.cam_target": "argmax",
            "xal.exporter": self.exporter,
            "xal.version": self.version,
        }

    @classmethod
    def from_strings(cls, values: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse the key/value pairs written by ``to_strings``; a missing or bad key names ``source``."""
        required = ("xal.class_names", "xal.input_size", "xal.channels", "xal.normalisation", "xal.target_layer")
        missing = [key for key in required if key not in values]
        if missing:
            raise ValueError(f"{source}: missing xal metadata {missing} (was it written by `xal export`?)")
        try:
            norm = json.loads(values["xal.normalisation"])
            pre = Preprocessing(
                tuple(json.loads(values["xal.input_size"])), int(values["xal.channels"]), norm["mean"], norm["std"]
            )
            return cls(
                class_names=tuple(json.loads(values["xal.class_names"])),
                preprocessing=pre,
                target_layer=values["xal.target_layer"],
                architecture=json.loads(values.get("xal.architecture", "{}")),
                exporter=values.get("xal.exporter", ""),
                version=values.get("xal.version", "unknown"),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{source}: unreadable xal metadata: {error}") from error
