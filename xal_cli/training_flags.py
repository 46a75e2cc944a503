"""``xal run``'s training flags and the ``TrainRecipe`` they make: one place for their names and
help, with every default read from ``TrainRecipe`` and ``RoiTraining`` (``xal_cli.defaults``).

Modes and ranges are checked by those dataclasses, not by argparse ``choices``, so a bad value is
one line (``xal run: error: roi_loss: expected one of none, dice, outside, got 'x'``) before
anything runs.

Every flag's argparse default is ``None`` ("not given"), the recipe's default shown in its help:
``train_recipe`` starts from ``TrainRecipe()`` or the named recipe and applies only the flags the
user typed, so a flag wins over a recipe even when its value is the plain default
(``--recipe cxr-sim --augment default --no-warm-start``).
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
    train.add_argument("--architecture", choices=ARCHITECTURES, default=None,
                       help=f"the backbone (default {_recipe('architecture')})")
    train.add_argument("--output-stride", type=int, choices=(32, 16), default=None,
                       help=f"input pixels per Grad-CAM cell: 32 or 16 (ResNets without the stem's max-pool; a 4×4 "
                            f"CAM at 64×64 instead of 2×2; default {_recipe('output_stride')})")
    for name, kind in (("epochs", int), ("patience", int), ("batch_size", int), ("lr", float)):
        train.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"default {_recipe(name)}")


def add_roi_training_flags(train: argparse._ArgumentGroup) -> None:
    """Training with the expert's ROIs (``RoiTraining``) and the stable-round options."""
    key = RoiTraining.key
    train.add_argument("--roi-loss", dest=key("loss"), default=None, metavar="none|dice|outside",
                       help=f"CAM–ROI loss term on the labelled items' ROIs (default {_roi('loss')})")
    train.add_argument("--roi-weight", dest=key("weight"), type=float, default=None,
                       help=f"its weight α >= 0 (default {_roi('weight')})")
    train.add_argument("--roi-augment", dest=key("augment"), default=None, metavar="none|swap",
                       help="swap: ROI-guided background swap of labelled items with an ROI "
                            f"(default {_roi('augment')})")
    train.add_argument("--roi-swap-prob", dest=key("swap_prob"), type=float, default=None,
                       help=f"probability an item is swapped (default {_roi('swap_prob')})")
    train.add_argument("--roi-dilate", dest=key("dilate"), type=int, default=None,
                       help=f"pixels the kept ROI is grown by (default {_roi('dilate')})")
    train.add_argument("--roi-swap-source", dest=key("swap_source"), default=None, metavar="any|other",
                       help="the outside comes from another labelled image of any class or of another class "
                            f"(default {_roi('swap_source')})")
    train.add_argument("--schedule", default=None, metavar="constant|cosine",
                       help="constant: early stopping on the validation loss; cosine: a cosine-annealed learning rate "
                            f"over all --epochs, last epoch kept, no hold-out (default {_recipe('schedule')})")
    train.add_argument("--augment", default=None, metavar="|".join(AUGMENT_PRESETS),
                       help="augmentation preset (xal_core.train.augment.AUGMENT_PRESETS): default (flip, small "
                            "affine, intensity), noflip (the same without the left-right flip), intensity (contrast "
                            f"and brightness only, no warp), none (default {_recipe('augment')})")
    train.add_argument("--width", type=int, default=None, dest="smallcnn_width",
                       help=f"smallcnn's first-stage channels (default {_recipe('smallcnn_width')}; cost grows as "
                            "its square)")
    train.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None,
                       help="start each round from the previous round's weights instead of from scratch "
                            f"(default {'on' if _recipe('warm_start') else 'off'}; --no-warm-start turns a recipe's off)")


def roi_training(args: argparse.Namespace, base: RoiTraining | None = None) -> RoiTraining:
    """The ROI flags as a checked ``RoiTraining``: ``base`` (default ``RoiTraining()``) with the flags
    that were given applied."""
    given = {f.name: getattr(args, RoiTraining.key(f.name), None) for f in dataclasses.fields(RoiTraining)}
    return dataclasses.replace(base or RoiTraining(), **{k: v for k, v in given.items() if v is not None})


def train_recipe(args: argparse.Namespace) -> TrainRecipe:
    """The training flags as a checked ``TrainRecipe``, the ROI settings whole (a field without a flag,
    such as ``val_fraction``, keeps its default).

    The base is ``TrainRecipe()``, or with ``--recipe NAME`` the named recipe
    (``xal_core.loop.recipe.RECIPES``); every flag that was given replaces the base's value, whatever
    that value is."""
    name = getattr(args, "recipe", None)
    base = recipe_named(name) if name else TrainRecipe()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainRecipe)
             if f.name != "roi" and getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **given, roi=roi_training(args, base.roi))


def add_recipe_choice(train: argparse._ArgumentGroup) -> None:
    """``--recipe NAME``: start from a named, calibrated recipe."""
    train.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                       help="start from a named recipe (xal_core.loop.recipe.RECIPES; cxr-sim: the one calibrated "
                            "on cxr-sim's validation split); other training flags given with it win")
