"""``TrainRecipe``: how each round's model is trained, as the ledger records it.

The recipe is the loop's side of training: the architecture, the epoch budget, warm starts and the
augmentation preset by name, plus ``fit``'s own settings that a run may change. Those take their
defaults from where they are defined (``TrainConfig`` for ``fit``'s, ``BackboneConfig`` for the
architecture's, ``RoiTraining`` for the ROI settings), so a default lives in one place;
``xal_core.loop.training.train_config`` turns a recipe into the ``TrainConfig`` of one round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xal_core.models.backbones import ARCHITECTURES, BackboneConfig
from xal_core.train.augment import augment_preset
from xal_core.train.config import TrainConfig, check_schedule
from xal_core.train.roi_training import RoiTraining

__all__ = ["RECIPES", "TrainRecipe", "recipe_named"]

#: the keys every ledger records; the other fields only when they differ from their defaults, so
#: that a ledger written before a field existed still resumes
_ALWAYS_RECORDED = ("architecture", "epochs", "patience", "batch_size", "lr", "val_fraction")


@dataclass(frozen=True)
class TrainRecipe:
    """How each round's model is trained (``xal_core.train.fit`` from scratch on the labels so far).

    From scratch rather than fine-tuned by default: the usual AL protocol (and the paper's), and it
    keeps a round's model a function of its labeled set and seed alone, which is what makes a
    resumed run retrain bit for bit the model it lost. ``warm_start`` starts round ``r`` from round
    ``r − 1``'s weights instead (steadier rounds; a lost checkpoint is then retrained from the
    previous round's, itself retrained first if it is gone).

    ``roi`` (``RoiTraining``) trains with the expert's ROIs of the labelled items (never the test
    split's); ``schedule`` chooses early stopping or a fixed cosine-annealed budget (``TrainConfig``).
    They, ``warm_start``, ``augment``, ``output_stride`` and ``smallcnn_width`` are recorded only
    when changed, and name the training in ``metrics.csv`` (``label``).
    """

    architecture: str = "resnet18"
    epochs: int = 12  # the paper's budget per round (``fit`` alone defaults to more, with early stopping)
    patience: int = TrainConfig.patience
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    val_fraction: float = TrainConfig.val_fraction  # used when the dataset has no validation split of its own
    # output_stride 16: a ResNet without the stem's max-pool, a CAM grid twice as fine
    output_stride: int = BackboneConfig.output_stride
    roi: RoiTraining = field(default_factory=RoiTraining)
    schedule: str = TrainConfig.schedule
    warm_start: bool = False
    augment: str = "default"  # an xal_core.train.augment.AUGMENT_PRESETS name
    # smallcnn_width: channels of smallcnn's first stage (its cost grows as the square)
    smallcnn_width: int = BackboneConfig.smallcnn_width

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
        self.backbone(1, 2)  # its own checks
        augment_preset(self.augment)
        check_schedule(self.schedule)
        if not isinstance(self.warm_start, bool):
            raise ValueError(f"warm_start: expected True or False, got {self.warm_start!r}")
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 2:
            raise ValueError(f"epochs and patience must be >= 1 and batch_size >= 2, got {self.epochs}, "
                             f"{self.patience}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")

    def backbone(self, channels: int, classes: int) -> BackboneConfig:
        """The architecture this recipe trains, for ``channels`` input channels and ``classes`` classes."""
        return BackboneConfig(self.architecture, channels, classes, output_stride=self.output_stride,
                              smallcnn_width=self.smallcnn_width)

    @property
    def uses_rois(self) -> bool:
        """Whether training reads the labelled items' ROIs."""
        return self.roi.active

    @property
    def label(self) -> str:
        """The non-default training as a short name (``swap+cosine``), ``""`` for the default.

        ``metrics.csv``'s ``training`` column and the report's series names (``dual+swap``) use it,
        so that runs of one strategy trained differently stay apart when ``xal report`` merges them:
        the ROI settings' label (``RoiTraining.label``), then ``cosine``, ``warm``, and
        ``aug-noflip`` / ``aug-none`` for another augmentation preset.
        """
        defaults = _defaults()
        tokens = [self.roi.label] if self.roi.label else []
        if self.schedule != defaults["schedule"]:
            tokens.append(self.schedule)
        if self.warm_start:
            tokens.append("warm")
        if self.augment != defaults["augment"]:
            tokens.append(f"aug-{self.augment}")
        return "+".join(tokens)

    def record(self) -> dict[str, Any]:
        """The recipe for the ledger, flat (the ROI settings as ``roi_<field>`` keys in ``roi``'s place)."""
        defaults = _defaults()
        data: dict[str, Any] = {}
        for name, value in dataclasses.asdict(self).items():
            if name == "roi":
                data.update(self.roi.record())
            elif name in _ALWAYS_RECORDED or value != defaults[name]:
                data[name] = value
        return data

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainRecipe:
        """The recipe of a :meth:`record` (a ledger's ``run_config["protocol"]["train"]``)."""
        prefix = RoiTraining.RECORD_PREFIX
        own = {key: value for key, value in record.items() if not key.startswith(prefix)}
        return cls(**own, roi=RoiTraining.from_record(record))


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(TrainRecipe) if f.default is not dataclasses.MISSING}


#: Named recipes a run can start from (``xal run --recipe NAME``): what a calibration chose, so that
#: the README's command gives it. ``cxr-sim``: calibrated on cxr-sim's validation split
#: (docs/results/study-cxr.md): a small CNN (an 8×8 CAM at 64²), a cosine budget per round, warm
#: starts, intensity-only augmentation (a bilinear warp blurs fine findings) and the ROI swap.
RECIPES: dict[str, TrainRecipe] = {
    "cxr-sim": TrainRecipe(architecture="smallcnn", smallcnn_width=8, epochs=20, schedule="cosine", warm_start=True,
                           augment="intensity", roi=RoiTraining(augment="swap")),
}


def recipe_named(name: str) -> TrainRecipe:
    """A recipe of ``RECIPES``; ``ValueError`` naming the choices for another name."""
    if name not in RECIPES:
        raise ValueError(f"recipe: expected one of {', '.join(RECIPES)}, got {name!r}")
    return RECIPES[name]
