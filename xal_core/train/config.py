"""``TrainConfig``: every knob of ``fit``, recorded in the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .augment import Augment


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: upper bound on epochs; early stopping may end sooner.
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

    def to_dict(self) -> dict:
        return asdict(self)
