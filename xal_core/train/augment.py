"""Simple augmentations for 2D medical images, batched torch ops on the training device.

Kept deliberately mild: a horizontal flip, a small random affine (rotation, translation, scale) and
an intensity jitter (contrast and brightness). Vertical flips are off by default, because anatomy
has an up and a down (a chest X-ray upside down is not a chest X-ray). Every random draw comes from
the ``torch.Generator`` passed in, so a seeded run repeats exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Per-image random transforms; ``Augment.none()`` turns them all off.

    Attributes:
        hflip: probability of a left-right flip.
        vflip: probability of an up-down flip.
        rotate_deg: rotation drawn uniformly from ``[-rotate_deg, rotate_deg]``.
        translate: shift drawn from ``[-translate, translate]`` of the image size, per axis.
        scale: zoom drawn from ``[1 - scale, 1 + scale]``.
        contrast / brightness: ``x · (1 + c) + b·std(x)`` with ``c, b`` drawn from ``[-v, v]``.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotate_deg: float = 10.0
    translate: float = 0.05
    scale: float = 0.1
    contrast: float = 0.1
    brightness: float = 0.1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Augment: {name} must be a finite value >= 0, got {value}")
        for name in ("hflip", "vflip"):
            if getattr(self, name) > 1:
                raise ValueError(f"Augment: {name} is a probability, got {getattr(self, name)}")
        if self.scale >= 1:
            raise ValueError(f"Augment: scale must be < 1, got {self.scale}")

    @classmethod
    def none(cls) -> Augment:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def active(self) -> bool:
        return any(value > 0 for value in asdict(self).values())

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of ``images [B, C, H, W]``; draws happen on the CPU generator."""
        return self.transform(images, generator)[0]

    def transform(self, images: torch.Tensor, generator: torch.Generator,
                  masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(augmented images, masks moved with them)``.

        ``masks [B, H, W]`` (ROIs) follow the flips and the affine warp of their image (bilinear, so
        they come back soft in ``[0, 1]``, and zero where the warp looks outside the frame); the
        intensity jitter leaves them alone. The draws are the same with or without masks, so
        passing masks changes no image.
        """
        if masks is not None:
            masks = masks.to(images.device, images.dtype)[:, None]
        if not self.active:
            return images, None if masks is None else masks[:, 0]
        batch = images.shape[0]

        def uniform(bound: float) -> torch.Tensor:
            return ((torch.rand(batch, generator=generator) * 2 - 1) * bound).to(images.device)

        out = images
        if self.hflip > 0:
            flip = (torch.rand(batch, generator=generator) < self.hflip).to(images.device)
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
            if masks is not None:
                masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
        if self.vflip > 0:
            flip = (torch.rand(batch, generator=generator) < self.vflip).to(images.device)
            out = torch.where(flip[:, None, None, None], out.flip(-2), out)
            if masks is not None:
                masks = torch.where(flip[:, None, None, None], masks.flip(-2), masks)
        if self.rotate_deg > 0 or self.translate > 0 or self.scale > 0:
            angle = uniform(math.radians(self.rotate_deg))
            zoom = 1 + uniform(self.scale)
            shift_x, shift_y = uniform(2 * self.translate), uniform(2 * self.translate)  # grid units span 2
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            theta = torch.stack(
                [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1
            ).to(out.dtype)
            grid = F.affine_grid(theta, list(out.shape), align_corners=False)
            out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
            if masks is not None:
                masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.contrast > 0 or self.brightness > 0:
            spread = out.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None, None]
            gain = 1 + uniform(self.contrast)[:, None, None, None]
            offset = uniform(self.brightness)[:, None, None, None] * spread
            out = out * gain.to(out.dtype) + offset.to(out.dtype)
        return out, None if masks is None else masks[:, 0]


#: Named augmentation settings, for recipes and the command line (``xal run --augment``):
#: ``default`` the mild set above; ``noflip`` the same without the left-right flip (anatomy is not
#: symmetric, and a flip moves a burned-in marker to the other corner, a cue the synthetic shortcut
#: benchmark encodes the class in); ``intensity`` contrast and brightness jitter only, no geometric
#: warp (a bilinear warp blurs a texture of a few pixels away, and with it a finding that lives in
#: that texture); ``none`` no augmentation.
AUGMENT_PRESETS: dict[str, Augment] = {
    "default": Augment(),
    "noflip": Augment(hflip=0.0),
    "intensity": Augment(hflip=0.0, rotate_deg=0.0, translate=0.0, scale=0.0),
    "none": Augment.none(),
}


def augment_preset(name: str) -> Augment:
    """The ``Augment`` of a preset name; ``ValueError`` naming the choices for another."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"augment: expected one of {', '.join(AUGMENT_PRESETS)}, got {name!r}")
    return AUGMENT_PRESETS[name]
