"""``xal run``'s training flags and the ``TrainRecipe`` they make: one place for their names and
help, with every default read from ``TrainRecipe`` and ``RoiTraining`` (``xal_cli.defaults``).

Modes and ranges are checked by those dataclasses, not by argparse ``choices``, so a bad value is
one line (``xal run: error: roi_loss: expected one of none, dice, outside, got 'x'``) before
anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from xal_core.loop.recipe import RECIPES, TrainRecipe, recipe_named
from xal_core.models.backbones import ARCHITECTURES
from xal_core.train.augment import AUGMENT_PRESETS
from xal_core.train.roi_training import RoiTraining

from .defaults import default_of

__all__ = ["add_recipe_choice", "add_recipe_flags", "add_roi_training_flags", "roi_training", "train_recipe"]


def _recipe(name: str) -> Any:
    return default_of(TrainRecipe, name)


def _roi(name: str) -> Any:
    return default_of(RoiTraining, name)


def add_recipe_flags(train: argparse._ArgumentGroup) -> None:
    """The architecture and the optimisation budget."""
    train.add_argument("--architecture", choices=ARCHITECTURES, default=_recipe("architecture"))
    train.add_argument("--output-stride", type=int, choices=(32, 16), default=_recipe("output_stride"),
                       help=f"input pixels per Grad-CAM cell: 32 or 16 (ResNets without the stem's max-pool; a 4×4 "
                            f"CAM at 64×64 instead of 2×2; default {_recipe('output_stride')})")
    for name, kind in (("epochs", int), ("patience", int), ("batch_size", int), ("lr", float)):
        train.add_argument(f"--{name.replace('_', '-')}", type=kind, default=_recipe(name))


def add_roi_training_flags(train: argparse._ArgumentGroup) -> None:
    """Training with the expert's ROIs (``RoiTraining``) and the stable-round options."""
    key = RoiTraining.key
    train.add_argument("--roi-loss", dest=key("loss"), default=_roi("loss"), metavar="none|dice|outside",
                       help=f"CAM–ROI loss term on the labelled items' ROIs (default {_roi('loss')})")
    train.add_argument("--roi-weight", dest=key("weight"), type=float, default=_roi("weight"),
                       help=f"its weight α >= 0 (default {_roi('weight')})")
    train.add_argument("--roi-augment", dest=key("augment"), default=_roi("augment"), metavar="none|swap",
                       help="swap: ROI-guided background swap of labelled items with an ROI "
                            f"(default {_roi('augment')})")
    train.add_argument("--roi-swap-prob", dest=key("swap_prob"), type=float, default=_roi("swap_prob"),
                       help=f"probability an item is swapped (default {_roi('swap_prob')})")
    train.add_argument("--roi-dilate", dest=key("dilate"), type=int, default=_roi("dilate"),
                       help=f"pixels the kept ROI is grown by (default {_roi('dilate')})")
    train.add_argument("--roi-swap-source", dest=key("swap_source"), default=_roi("swap_source"), metavar="any|other",
                       help="the outside comes from another labelled image of any class or of another class "
                            f"(default {_roi('swap_source')})")
    train.add_argument("--schedule", default=_recipe("schedule"), metavar="constant|cosine",
                       help="constant: early stopping on the validation loss; cosine: a cosine-annealed learning rate "
                            f"over all --epochs, last epoch kept, no hold-out (default {_recipe('schedule')})")
    train.add_argument("--augment", default=_recipe("augment"), metavar="|".join(AUGMENT_PRESETS),
                       help="augmentation preset (xal_core.train.augment.AUGMENT_PRESETS): default (flip, small "
                            "affine, intensity), noflip (the same without the left-right flip), intensity (contrast "
                            f"and brightness only, no warp), none (default {_recipe('augment')})")
    train.add_argument("--width", type=int, default=_recipe("smallcnn_width"), dest="smallcnn_width",
                       help=f"smallcnn's first-stage channels (default {_recipe('smallcnn_width')}; cost grows as "
                            "its square)")
    train.add_argument("--warm-start", action="store_true",
                       help="start each round from the previous round's weights instead of from scratch")


def roi_training(args: argparse.Namespace) -> RoiTraining:
    """The ROI flags as a checked ``RoiTraining``."""
    return RoiTraining(**{f.name: getattr(args, RoiTraining.key(f.name)) for f in dataclasses.fields(RoiTraining)})


def train_recipe(args: argparse.Namespace) -> TrainRecipe:
    """The training flags as a checked ``TrainRecipe``, the ROI settings whole (a field without a flag,
    such as ``val_fraction``, keeps its default).

    With ``--recipe NAME`` the named recipe (``xal_core.loop.recipe.RECIPES``) replaces the defaults:
    a flag whose value differs from ``xal run``'s default still wins over it."""
    names = [f.name for f in dataclasses.fields(TrainRecipe) if f.name != "roi" and hasattr(args, f.name)]
    given = {name: getattr(args, name) for name in names}
    roi = roi_training(args)
    name = getattr(args, "recipe", None)
    if not name:
        return TrainRecipe(**given, roi=roi)
    base, plain = recipe_named(name), TrainRecipe()
    changed = {key: value for key, value in given.items() if value != getattr(plain, key)}
    roi_changed = {f.name: getattr(roi, f.name) for f in dataclasses.fields(RoiTraining)
                   if getattr(roi, f.name) != getattr(plain.roi, f.name)}
    return dataclasses.replace(base, **changed, roi=dataclasses.replace(base.roi, **roi_changed))


def add_recipe_choice(train: argparse._ArgumentGroup) -> None:
    """``--recipe NAME``: start from a named, calibrated recipe."""
    train.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                       help="start from a named recipe (xal_core.loop.recipe.RECIPES; cxr-sim: the one calibrated "
                            "on cxr-sim's validation split); other training flags given with it win")
