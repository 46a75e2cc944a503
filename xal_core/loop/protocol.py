"""The active-learning protocol: how many labels, in how many rounds, scored and trained how.

The defaults are the paper's budget: 50 random initial labels, then 13 rounds of 40 acquisitions,
570 labels in all. Everything that decides *what* a run measures lives here and is recorded in the
ledger's ``run_config``; a resumed run with a different protocol is refused (``Ledger.open``), so a
ledger never mixes two experiments. The scoring parameters are one ``ScoringConfig`` and the
training one ``TrainRecipe``, each carried whole; the record keeps the flat shape the first
ledgers were written in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from xal_core.acquisition.strategies import DIVERSITY_MODES, STRATEGY_NAMES
from xal_core.models.export import FORMATS
from xal_core.scoring.parameters import ScoringConfig

from .extras import check_drop_probability, check_runnable, needed_columns
from .recipe import TrainRecipe

__all__ = ["INITIAL_STRATEGY", "Protocol"]

INITIAL_STRATEGY = "initial"  # the strategy name recorded for round 0's random labels

#: the ``ScoringConfig`` fields a ledger records, flat among the protocol's keys, in the first
#: ledgers' order; ``fusion`` is not one: the loop's strategies fuse by themselves
_RECORDED_SCORING = ("weight", "threshold", "uncertainty", "missing_roi")
#: recorded only when a strategy uses them and they differ from their defaults
_MC_FIELDS = ("mc_passes", "mc_dropout")


@dataclass(frozen=True)
class Protocol:
    """One experiment: strategies × seeds, each run for the same label budget.

    Attributes:
        strategies: names from ``xal_core.acquisition.strategies.STRATEGY_NAMES``.
        seeds: one arm per strategy and seed; a seed fixes the initial labels (shared by every
            strategy of that seed), the weight initialisations and the random strategies' draws.
        initial: random labels before the first round.
        rounds, per_round: acquisition rounds and labels acquired in each.
        scoring: λ, τ, the uncertainty measure and the missing-ROI policy, the one object that both
            the scorer and every strategy read (its ``fusion`` stays at the default: ``dual`` fuses
            by weight, ``dual_rank`` by rank).
        diversity: an optional batch-diversity mode.
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
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    diversity: str | None = None
    export_format: str = "onnx"
    train: TrainRecipe = field(default_factory=TrainRecipe)
    mc_passes: int = 20
    mc_dropout: float = 0.5

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
        if self.scoring.fusion != ScoringConfig().fusion:
            raise ValueError(f"fusion: the loop's strategies fuse by themselves (dual by weight, dual_rank by rank); "
                             f"leave it at {ScoringConfig().fusion!r}, got {self.scoring.fusion!r}")
        if self.diversity is not None and self.diversity not in DIVERSITY_MODES:
            raise ValueError(f"diversity: expected one of {DIVERSITY_MODES} or none, got {self.diversity!r}")
        if self.export_format not in FORMATS:
            expected = " or ".join(repr(name) for name in FORMATS)
            raise ValueError(f"export_format: expected {expected}, got {self.export_format!r}")
        if isinstance(self.mc_passes, bool) or not isinstance(self.mc_passes, int) or self.mc_passes < 2:
            raise ValueError(f"mc_passes: expected an integer >= 2 (BALD compares passes), got {self.mc_passes!r}")
        check_drop_probability(self.mc_dropout)
        check_runnable(self)  # a strategy the loop cannot feed is refused now, not after a round of training

    @property
    def budget(self) -> int:
        """Labels at the end: ``initial + rounds · per_round`` (570 by default)."""
        return self.initial + self.rounds * self.per_round

    def labels_at(self, round: int) -> int:
        return self.initial + round * self.per_round

    def to_dict(self) -> dict[str, Any]:
        """The ledger's ``run_config`` part, flat as the first ledgers were: the scoring parameters
        among the protocol's keys, the recipe as ``TrainRecipe.record``. Fields added after a ledger
        format was fixed are left out at their default, so that runs recorded before them still
        resume; the MC-dropout settings also when no strategy uses them, as they do not change such
        a run."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in _MC_FIELDS}
        uses_mc = any(needed_columns(self, name)[1] for name in self.strategies)
        data: dict[str, Any] = {}
        for name, value in dataclasses.asdict(self).items():
            if name == "scoring":
                data.update({key: value[key] for key in _RECORDED_SCORING})
            elif name == "train":
                data["train"] = self.train.record()
            elif name not in _MC_FIELDS or (uses_mc and value != defaults[name]):
                data[name] = value
        return data

    def strategy_params(self, name: str) -> dict[str, Any]:
        """The keyword arguments ``make_strategy(name, ...)`` takes for this protocol: the whole
        :attr:`scoring` config (the strategy takes the fields it names) and the diversity mode."""
        params: dict[str, Any] = {"scoring": self.scoring}
        if self.diversity is not None and name != "random":
            params["diversity"] = self.diversity
        return params
