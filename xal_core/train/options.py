"""The names, defaults and checks of the ROI-training and schedule options, shared by ``TrainConfig``
(``fit``) and the loop's ``TrainRecipe`` (``xal run``), so both refuse bad values with the same line.

Why the expert's ROIs teach the model at all (issue 14): on the shortcut benchmark a model trained on
labels alone reads the marker, not the lesion. Two levers use the ROIs of labelled items:

* ``roi_loss`` (``dice`` / ``outside``, weight ``roi_weight``): a term on the analytic Grad-CAM
  (``xal_core.train.roi_loss``);
* ``roi_augment="swap"``: the ROI-guided background swap (``xal_core.train.roi_swap``): with
  probability ``roi_swap_prob`` a labelled image keeps its ROI, dilated by ``roi_dilate`` pixels,
  and takes everything outside it from another labelled image, of any class or (``roi_swap_source``
  ``other``) of another class.

``schedule``: ``constant`` (a fixed learning rate, early stopping on the validation loss, the best
epoch kept: xal's behaviour so far) or ``cosine`` (cosine annealing of the learning rate over a
fixed epoch budget, no early stopping, the last epoch kept, and no validation items held out of the
labels: a tiny validation split picks noisy epochs, and round-to-round accuracy swung by 0.13–0.27).
"""

from __future__ import annotations

import math

__all__ = [
    "ROI_AUGMENTS",
    "ROI_DEFAULTS",
    "ROI_LOSSES",
    "SCHEDULES",
    "SWAP_SOURCES",
    "AUGMENT_DEFAULT",
    "check_training_options",
    "training_label",
]

ROI_LOSSES = ("none", "dice", "outside")
ROI_AUGMENTS = ("none", "swap")
SWAP_SOURCES = ("any", "other")
SCHEDULES = ("constant", "cosine")

# The defaults: a field at its default is left out of every record (checkpoint config, ledger
# run_config, metrics.csv), so records written before these options existed read the same.
ROI_DEFAULTS: dict[str, object] = {
    "roi_loss": "none",
    "roi_weight": 1.0,
    "roi_augment": "none",
    "roi_swap_prob": 0.5,
    "roi_dilate": 2,
    "roi_swap_source": "any",
    "schedule": "constant",
}
#: The default augmentation preset (``xal_core.train.augment.AUGMENT_PRESETS``), left out of records.
AUGMENT_DEFAULT = "default"


def check_training_options(roi_loss: str, roi_weight: float, roi_augment: str, roi_swap_prob: float,
                           roi_dilate: int, roi_swap_source: str, schedule: str) -> None:
    """``ValueError`` (one line naming the option) for an unknown mode or a value out of range.

    A swap or loss parameter changed while its mode is ``none`` is refused too: it would do nothing,
    yet label the run as if it did.
    """
    for name, value, allowed in (("roi_loss", roi_loss, ROI_LOSSES), ("roi_augment", roi_augment, ROI_AUGMENTS),
                                 ("roi_swap_source", roi_swap_source, SWAP_SOURCES),
                                 ("schedule", schedule, SCHEDULES)):
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    if isinstance(roi_weight, bool) or not isinstance(roi_weight, int | float) or not math.isfinite(roi_weight) \
            or roi_weight < 0:
        raise ValueError(f"roi_weight: expected a finite number >= 0, got {roi_weight!r}")
    if isinstance(roi_swap_prob, bool) or not isinstance(roi_swap_prob, int | float) \
            or not 0.0 <= roi_swap_prob <= 1.0:
        raise ValueError(f"roi_swap_prob: expected a probability in [0, 1], got {roi_swap_prob!r}")
    if isinstance(roi_dilate, bool) or not isinstance(roi_dilate, int) or roi_dilate < 0:
        raise ValueError(f"roi_dilate: expected an integer number of pixels >= 0, got {roi_dilate!r}")
    if roi_loss == "none" and roi_weight != ROI_DEFAULTS["roi_weight"]:
        raise ValueError(f"roi_weight {roi_weight} is set but roi_loss is 'none'; choose dice or outside")
    if roi_augment == "none":
        for name, value in (("roi_swap_prob", roi_swap_prob), ("roi_dilate", roi_dilate),
                            ("roi_swap_source", roi_swap_source)):
            if value != ROI_DEFAULTS[name]:
                raise ValueError(f"{name} {value!r} is set but roi_augment is 'none'; use roi_augment 'swap'")


def training_label(roi_loss: str = "none", roi_weight: float = 1.0, roi_augment: str = "none",
                   roi_swap_prob: float = 0.5, roi_dilate: int = 2, roi_swap_source: str = "any",
                   schedule: str = "constant", warm_start: bool = False, augment: str = AUGMENT_DEFAULT) -> str:
    """A short, file-name-safe name of the non-default options, ``""`` when all are defaults.

    ``metrics.csv``'s ``training`` column and the report's series names (``dual+swap``) use it, so
    that runs of one strategy trained differently stay apart when ``xal report`` merges them. Tokens
    joined by ``+``: ``dice`` / ``outside`` (``dice0.5`` with a weight other than 1), ``swap`` (with
    ``-other`` / ``-p0.3`` / ``-d4`` for a non-default source, probability, dilation), ``cosine``,
    ``warm``, and ``aug-noflip`` / ``aug-none`` for a non-default augmentation preset.
    """
    tokens = []
    if roi_loss != "none":
        tokens.append(roi_loss + ("" if roi_weight == 1.0 else f"{roi_weight:g}"))
    if roi_augment != "none":
        token = roi_augment
        if roi_swap_source != ROI_DEFAULTS["roi_swap_source"]:
            token += f"-{roi_swap_source}"
        if roi_swap_prob != ROI_DEFAULTS["roi_swap_prob"]:
            token += f"-p{roi_swap_prob:g}"
        if roi_dilate != ROI_DEFAULTS["roi_dilate"]:
            token += f"-d{roi_dilate}"
        tokens.append(token)
    if schedule != "constant":
        tokens.append(schedule)
    if warm_start:
        tokens.append("warm")
    if augment != AUGMENT_DEFAULT:
        tokens.append(f"aug-{augment}")
    return "+".join(tokens)
