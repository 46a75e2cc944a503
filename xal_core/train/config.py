"""``TrainConfig``: every knob of ``fit``, recorded in the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .augment import Augment
from .options import ROI_DEFAULTS, check_training_options


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
        roi_loss, roi_weight: a CAM–ROI term added to the cross-entropy, ``none`` / ``dice`` /
            ``outside`` with weight α (``xal_core.train.roi_loss``); needs ``fit(..., rois=...)``.
        roi_augment, roi_swap_prob, roi_dilate, roi_swap_source: the ROI-guided background swap
            (``xal_core.train.roi_swap``); needs ``rois`` too.
        schedule: ``constant`` (early stopping, best epoch) or ``cosine`` (cosine-annealed learning
            rate over all ``epochs``, no early stopping and no validation hold-out, last epoch kept).
        The last seven are described in ``xal_core.train.options`` and recorded only when changed.
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
    roi_loss: str = "none"
    roi_weight: float = 1.0
    roi_augment: str = "none"
    roi_swap_prob: float = 0.5
    roi_dilate: int = 2
    roi_swap_source: str = "any"
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
            check_training_options(self.roi_loss, self.roi_weight, self.roi_augment, self.roi_swap_prob,
                                   self.roi_dilate, self.roi_swap_source, self.schedule)
        except ValueError as error:
            raise ValueError(f"TrainConfig: {error}") from None

    @property
    def uses_rois(self) -> bool:
        """Whether training reads the labelled items' ROIs (an ROI loss or the swap)."""
        return self.roi_loss != "none" or self.roi_augment != "none"

    def to_dict(self) -> dict:
        """All fields, except the ROI and schedule options at their defaults (older records' shape)."""
        data = asdict(self)
        for name, default in ROI_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data
