"""``RoiTraining``: how the expert's ROIs of the labelled items teach the model, with its checks.

Why the ROIs teach at all (issue 14): on the shortcut benchmark a model trained on labels alone
reads the marker, not the lesion. Two levers use the ROIs:

* ``loss`` (``dice`` / ``outside``, weighted by ``weight``): a term on the analytic Grad-CAM
  (``xal_core.train.roi_loss``);
* ``augment="swap"``: the ROI-guided background swap (``xal_core.train.roi_swap``): with probability
  ``swap_prob`` a labelled image keeps its ROI, dilated by ``dilate`` pixels, and takes everything
  outside it from another labelled image, of any class or (``swap_source="other"``) of another class.

One frozen dataclass, defined here only, carried whole from ``xal run``'s flags through the loop's
``TrainRecipe`` to ``fit``'s ``TrainConfig``. Records (a checkpoint's config, a ledger's
``run_config``) and flags name each field ``roi_<field>`` (``roi_loss``, ``--roi-swap-prob``), and a
record holds a field only when it differs from its default, so records written before these options
existed read the same.

>>> RoiTraining(loss="dice", weight=0.5, augment="swap", swap_source="other").label
'dice0.5+swap-other'
>>> RoiTraining(augment="swap", dilate=4).record()
{'roi_augment': 'swap', 'roi_dilate': 4}
>>> RoiTraining(swap_prob=0.3)
Traceback (most recent call last):
...
ValueError: roi_swap_prob 0.3 is set but roi_augment is 'none'; use roi_augment 'swap'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["ROI_AUGMENTS", "ROI_LOSSES", "SWAP_SOURCES", "RoiTraining"]

ROI_LOSSES = ("none", "dice", "outside")
ROI_AUGMENTS = ("none", "swap")
SWAP_SOURCES = ("any", "other")


@dataclass(frozen=True)
class RoiTraining:
    """Training with the labelled items' ROIs (see the module docstring); all off by default.

    Attributes:
        loss: ``none``, ``dice`` or ``outside``: the CAM–ROI term added to the cross-entropy.
        weight: its weight α, a finite number >= 0 (changed only together with a loss).
        augment: ``none`` or ``swap``: the ROI-guided background swap.
        swap_prob: the probability that a labelled image with an ROI is swapped.
        dilate: pixels the kept ROI is grown by.
        swap_source: where the outside comes from: another labelled image of ``any`` class, or of
            an ``other`` class. The last three are changed only together with the swap.
    """

    loss: str = "none"
    weight: float = 1.0
    augment: str = "none"
    swap_prob: float = 0.5
    dilate: int = 2
    swap_source: str = "any"

    #: what records and flags put before a field's name (``roi_loss``, ``--roi-loss``)
    RECORD_PREFIX: ClassVar[str] = "roi_"

    def __post_init__(self) -> None:
        """``ValueError`` (one line naming the option) for an unknown mode or a value out of range.

        A swap or loss parameter changed while its mode is ``none`` is refused too: it would do
        nothing, yet label the run as if it did.
        """
        for name, allowed in (("loss", ROI_LOSSES), ("augment", ROI_AUGMENTS), ("swap_source", SWAP_SOURCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{self.key(name)}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        weight, prob, dilate = self.weight, self.swap_prob, self.dilate
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{self.key('weight')}: expected a finite number >= 0, got {weight!r}")
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"{self.key('swap_prob')}: expected a probability in [0, 1], got {prob!r}")
        if isinstance(dilate, bool) or not isinstance(dilate, int) or dilate < 0:
            raise ValueError(f"{self.key('dilate')}: expected an integer number of pixels >= 0, got {dilate!r}")
        defaults = _defaults()
        if self.loss == "none" and weight != defaults["weight"]:
            raise ValueError(f"{self.key('weight')} {weight} is set but {self.key('loss')} is 'none'; "
                             "choose dice or outside")
        if self.augment == "none":
            for name in ("swap_prob", "dilate", "swap_source"):
                if getattr(self, name) != defaults[name]:
                    raise ValueError(f"{self.key(name)} {getattr(self, name)!r} is set but {self.key('augment')} is "
                                     f"'none'; use {self.key('augment')} 'swap'")

    @classmethod
    def key(cls, name: str) -> str:
        """A field's name in records, flags and messages (``roi_loss``)."""
        return cls.RECORD_PREFIX + name

    @property
    def active(self) -> bool:
        """Whether training reads the labelled items' ROIs (a loss or the swap)."""
        return self.loss != "none" or self.augment != "none"

    @property
    def label(self) -> str:
        """The non-default settings as a short, file-name-safe name, ``""`` for the defaults.

        ``dice`` / ``outside`` (``dice0.5`` with another weight), then ``swap`` with ``-other`` /
        ``-p0.3`` / ``-d4`` for a non-default source, probability, dilation, joined by ``+``.
        """
        defaults = _defaults()
        tokens = []
        if self.loss != "none":
            tokens.append(self.loss + ("" if self.weight == defaults["weight"] else f"{self.weight:g}"))
        if self.augment != "none":
            token = self.augment
            if self.swap_source != defaults["swap_source"]:
                token += f"-{self.swap_source}"
            if self.swap_prob != defaults["swap_prob"]:
                token += f"-p{self.swap_prob:g}"
            if self.dilate != defaults["dilate"]:
                token += f"-d{self.dilate}"
            tokens.append(token)
        return "+".join(tokens)

    def record(self) -> dict[str, Any]:
        """The fields that differ from their defaults, under their record names (field order)."""
        defaults = _defaults()
        return {self.key(name): value for name, value in dataclasses.asdict(self).items() if value != defaults[name]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoiTraining:
        """From a record holding :meth:`record`'s keys among others (the keys without the prefix are ignored)."""
        prefix = cls.RECORD_PREFIX
        return cls(**{key[len(prefix):]: value for key, value in record.items() if key.startswith(prefix)})


def _defaults() -> dict[str, Any]:
    return {field.name: field.default for field in dataclasses.fields(RoiTraining)}
