"""``TrainConfig``: every knob of ``fit``, recorded in the checkpoint.

``schedule``: ``constant`` (a fixed learning rate, early stopping on the validation loss, the best
epoch kept) or ``cosine`` (cosine annealing of the learning rate over a fixed epoch budget, no early
stopping, the last epoch kept, and no validation items held out of the labels: a tiny validation
split picks noisy epochs, and round-to-round accuracy swung by 0.13–0.27).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from .augment import Augment
from .roi_training import RoiTraining

__all__ = ["SCHEDULES", "TrainConfig", "check_schedule"]

SCHEDULES = ("constant", "cosine")


def check_schedule(value: object) -> str:
    """``value`` when it is one of :data:`SCHEDULES`; a one-line ``ValueError`` otherwise."""
    if value not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: upper bound on epochs; early stopping may end sooner (the whole budget with
            ``schedule="cosine"``).
        batch_size: images per step.
        lr, weight_decay: AdamW settings.
        val_fraction: share of the training data held out for early stopping when no validation
            data is given (0 disables early stopping and keeps the last epoch).
        patience: epochs without a better validation loss before stopping; the best epoch's
            weights are restored.
        min_delta: how much lower the validation loss must be to count as better.
        class_weighted: weight the cross-entropy by inverse class frequency (imbalanced sets).
        amp: mixed precision (float16 autocast + gradient scaling); only on CUDA, ignored on CPU.
        augment: the augmentations (``Augment.none()`` for none).
        seed: seeds the split, the shuffling, the augmentations and dropout.
        device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available).
        num_workers: DataLoader workers.
        roi: training with the items' ROIs (``RoiTraining``: a CAM–ROI loss, the background swap);
            when active, ``fit`` needs ``rois=...``.
        schedule: ``constant`` (early stopping, best epoch) or ``cosine`` (cosine-annealed learning
            rate over all ``epochs``, no early stopping and no validation hold-out, last epoch kept).
        The last two are recorded only when changed, so earlier checkpoints' configs read the same.
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 3
    min_delta: float = 0.0
    class_weighted: bool = True
    amp: bool = True
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    device: str | None = None
    num_workers: int = 0
    roi: RoiTraining = field(default_factory=RoiTraining)
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig: val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.patience < 1:
            raise ValueError(f"TrainConfig: patience must be >= 1, got {self.patience}")
        if not self.min_delta >= 0:
            raise ValueError(f"TrainConfig: min_delta must be >= 0, got {self.min_delta}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"TrainConfig: lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        try:
            check_schedule(self.schedule)
        except ValueError as error:
            raise ValueError(f"TrainConfig: {error}") from None

    @property
    def uses_rois(self) -> bool:
        """Whether training reads the labelled items' ROIs (an ROI loss or the swap)."""
        return self.roi.active

    def to_dict(self) -> dict:
        """All fields, flat as older records were: the ROI settings as ``roi_<field>`` keys in the
        place of ``roi``, and they and ``schedule`` only when changed."""
        default_schedule = next(f.default for f in dataclasses.fields(self) if f.name == "schedule")
        data: dict = {}
        for name, value in asdict(self).items():
            if name == "roi":
                data.update(self.roi.record())
            elif name != "schedule" or value != default_schedule:
                data[name] = value
        return data
