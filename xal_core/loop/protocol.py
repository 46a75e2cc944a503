"""The active-learning protocol: how many labels, in how many rounds, trained how.

The defaults are the paper's budget: 50 random initial labels, then 13 rounds of 40 acquisitions,
570 labels in all. Everything that decides *what* a run measures lives here and is recorded in the
ledger's ``run_config``; a resumed run with a different protocol is refused (``Ledger.open``), so a
ledger never mixes two experiments.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from xal_core.acquisition.strategies import DIVERSITY_MODES, STRATEGY_NAMES
from xal_core.models.backbones import ARCHITECTURES, BackboneConfig
from xal_core.scoring.parameters import (
    DEFAULT_MISSING_ROI,
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
    ScoringConfig,
    check_missing_roi,
    check_threshold,
    check_uncertainty,
    check_weight,
)
from xal_core.train.augment import augment_preset
from xal_core.train.options import AUGMENT_DEFAULT, ROI_DEFAULTS, check_training_options, training_label

__all__ = ["Protocol", "TrainRecipe", "INITIAL_STRATEGY"]

INITIAL_STRATEGY = "initial"  # the strategy name recorded for round 0's random labels
MC_PASSES, MC_DROPOUT = 20, 0.5  # BALD's default last-layer MC dropout: T passes, drop probability p


@dataclass(frozen=True)
class TrainRecipe:
    """How each round's model is trained (``xal_core.train.fit`` from scratch on the labels so far).

    From scratch rather than fine-tuned by default: the usual AL protocol (and the paper's), and it
    keeps a round's model a function of its labeled set and seed alone, which is what makes a
    resumed run retrain bit for bit the model it lost. ``warm_start`` starts round ``r`` from round
    ``r − 1``'s weights instead (steadier rounds; a lost checkpoint is then retrained from the
    previous round's, itself retrained first if it is gone).

    The ROI and schedule options (``roi_loss`` … ``schedule``, see ``xal_core.train.options``) train
    with the expert's ROIs of the labelled items (never the test split's) and choose early stopping
    or a fixed cosine-annealed budget. They and ``warm_start`` are recorded only when changed, and
    name the training in ``metrics.csv`` (``label``).
    """

    architecture: str = "resnet18"
    epochs: int = 12
    patience: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.2  # used when the dataset has no validation split of its own
    output_stride: int = 32  # 16: a ResNet without the stem's max-pool, a CAM grid twice as fine
    roi_loss: str = "none"
    roi_weight: float = 1.0
    roi_augment: str = "none"
    roi_swap_prob: float = 0.5
    roi_dilate: int = 2
    roi_swap_source: str = "any"
    schedule: str = "constant"
    warm_start: bool = False
    augment: str = AUGMENT_DEFAULT  # an xal_core.train.augment.AUGMENT_PRESETS name
    smallcnn_width: int = 32  # channels of smallcnn's first stage (its cost grows as the square)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
        self.backbone(1, 2)  # its own checks
        augment_preset(self.augment)
        check_training_options(self.roi_loss, self.roi_weight, self.roi_augment, self.roi_swap_prob,
                               self.roi_dilate, self.roi_swap_source, self.schedule)
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
        return self.roi_loss != "none" or self.roi_augment != "none"

    @property
    def label(self) -> str:
        """The non-default training options as a short name (``swap+cosine``), ``""`` for the default."""
        return training_label(self.roi_loss, self.roi_weight, self.roi_augment, self.roi_swap_prob, self.roi_dilate,
                              self.roi_swap_source, self.schedule, self.warm_start, self.augment)

    def record(self) -> dict:
        """The recipe for the ledger: fields added after the first ledgers are left out at their default."""
        data = dataclasses.asdict(self)
        for key, default in {**ROI_DEFAULTS, "output_stride": 32, "warm_start": False, "augment": AUGMENT_DEFAULT,
                             "smallcnn_width": 32}.items():
            if data[key] == default:
                del data[key]
        return data


@dataclass(frozen=True)
class Protocol:
    """One experiment: strategies × seeds, each run for the same label budget.

    Attributes:
        strategies: names from ``xal_core.acquisition.strategies.STRATEGY_NAMES``.
        seeds: one arm per strategy and seed; a seed fixes the initial labels (shared by every
            strategy of that seed), the weight initialisations and the random strategies' draws.
        initial: random labels before the first round.
        rounds, per_round: acquisition rounds and labels acquired in each.
        weight, threshold, uncertainty, missing_roi, diversity: the strategies' parameters
            (λ, τ, the uncertainty measure, the missing-ROI policy, an optional batch-diversity mode).
        export_format: how each round's model reaches the scorer (``onnx`` or ``torchscript``).
        train: the training recipe.
        mc_passes, mc_dropout: BALD's ``T`` stochastic passes and drop probability ``p`` of the
            last-layer MC dropout that stands in for a dropout network (``xal_core.loop.extras``).
    """

    strategies: tuple[str, ...] = ("random", "entropy", "dual")
    seeds: tuple[int, ...] = (0,)
    initial: int = 50
    rounds: int = 13
    per_round: int = 40
    weight: float = DEFAULT_WEIGHT
    threshold: float = DEFAULT_THRESHOLD
    uncertainty: str = DEFAULT_UNCERTAINTY
    missing_roi: str = DEFAULT_MISSING_ROI
    diversity: str | None = None
    export_format: str = "onnx"
    train: TrainRecipe = field(default_factory=TrainRecipe)
    mc_passes: int = MC_PASSES
    mc_dropout: float = MC_DROPOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if unknown or not self.strategies:
            raise ValueError(f"strategies: expected some of {', '.join(STRATEGY_NAMES)}, got {list(self.strategies)}")
        if len(set(self.strategies)) != len(self.strategies) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("strategies and seeds must not repeat")
        if not self.seeds:
            raise ValueError("seeds: at least one")
        if self.initial < 2 or self.rounds < 0 or self.per_round < 1:
            raise ValueError(f"initial >= 2, rounds >= 0 and per_round >= 1 required, got {self.initial}, "
                             f"{self.rounds}, {self.per_round}")
        check_weight(self.weight)
        check_threshold(self.threshold)
        check_uncertainty(self.uncertainty)
        check_missing_roi(self.missing_roi)
        if self.diversity is not None and self.diversity not in DIVERSITY_MODES:
            raise ValueError(f"diversity: expected one of {DIVERSITY_MODES} or none, got {self.diversity!r}")
        if self.export_format not in ("onnx", "torchscript"):
            raise ValueError(f"export_format: expected 'onnx' or 'torchscript', got {self.export_format!r}")
        if isinstance(self.mc_passes, bool) or not isinstance(self.mc_passes, int) or self.mc_passes < 2:
            raise ValueError(f"mc_passes: expected an integer >= 2 (BALD compares passes), got {self.mc_passes!r}")
        if not 0.0 <= self.mc_dropout < 1.0:
            raise ValueError(f"mc_dropout: expected a drop probability in [0, 1), got {self.mc_dropout!r}")
        from .extras import check_runnable  # deferred: it builds strategies

        check_runnable(self)  # a strategy the loop cannot feed is refused now, not after a round of training

    @property
    def budget(self) -> int:
        """Labels at the end: ``initial + rounds · per_round`` (570 by default)."""
        return self.initial + self.rounds * self.per_round

    def labels_at(self, round: int) -> int:
        return self.initial + round * self.per_round

    def to_dict(self) -> dict:
        """The ledger's ``run_config`` part. Fields added after a ledger format was fixed are left
        out at their default, so that runs recorded before them still resume; the MC-dropout
        settings also when no strategy uses them, as they do not change such a run."""
        data = dataclasses.asdict(self)
        data["train"] = self.train.record()
        from .extras import needed_columns

        uses_mc = any(needed_columns(self, name)[1] for name in self.strategies)
        for key, default in (("mc_passes", MC_PASSES), ("mc_dropout", MC_DROPOUT)):
            if not uses_mc or data[key] == default:
                del data[key]
        return data

    @property
    def scoring(self) -> ScoringConfig:
        """λ, τ, the uncertainty measure and the missing-ROI policy as the one object that both the
        scorer and every strategy read, so that no layer picks its own subset of them."""
        return ScoringConfig(uncertainty=self.uncertainty, weight=self.weight, threshold=self.threshold,
                             missing_roi=self.missing_roi)

    def strategy_params(self, name: str) -> dict:
        """The keyword arguments ``make_strategy(name, ...)`` takes for this protocol: the whole
        :attr:`scoring` config (the strategy takes the fields it names) and the diversity mode."""
        params: dict = {"scoring": self.scoring}
        if self.diversity is not None and name != "random":
            params["diversity"] = self.diversity
        return params


def derived_seed(*parts: object) -> int:
    """A 31-bit seed from named parts (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF
