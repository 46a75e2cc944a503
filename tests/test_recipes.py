"""``xal run --recipe NAME``: a named, calibrated recipe, with other training flags winning over it."""

from __future__ import annotations

import argparse

import pytest

from xal_cli.run import add_arguments
from xal_cli.training_flags import train_recipe
from xal_core.loop.recipe import RECIPES, TrainRecipe, recipe_named


def _recipe(*argv: str) -> TrainRecipe:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return train_recipe(parser.parse_args(list(argv)))


def test_the_cxr_sim_recipe_is_the_calibrated_one():
    recipe = _recipe("--recipe", "cxr-sim")
    assert recipe == RECIPES["cxr-sim"]
    assert (recipe.architecture, recipe.smallcnn_width, recipe.epochs, recipe.schedule, recipe.warm_start,
            recipe.augment, recipe.roi.augment) == ("smallcnn", 8, 20, "cosine", True, "intensity", "swap")


def test_flags_given_with_a_recipe_win_and_no_recipe_changes_nothing():
    assert _recipe("--recipe", "cxr-sim", "--width", "16", "--epochs", "5").smallcnn_width == 16
    assert _recipe("--recipe", "cxr-sim", "--epochs", "5").epochs == 5
    assert _recipe() == TrainRecipe()
    with pytest.raises(ValueError, match="recipe: expected one of cxr-sim, got 'x'"):
        recipe_named("x")


def test_a_flag_given_at_its_plain_default_still_wins_over_the_recipe():
    """Before, a flag was applied over a recipe only when its value differed from ``xal run``'s
    default, so ``--recipe cxr-sim --augment default`` silently kept the recipe's ``intensity``."""
    recipe = _recipe("--recipe", "cxr-sim", "--augment", "default", "--no-warm-start", "--roi-augment", "none",
                     "--architecture", "resnet18", "--schedule", "constant")
    plain = TrainRecipe()
    assert (recipe.augment, recipe.warm_start, recipe.roi.augment, recipe.architecture, recipe.schedule) == (
        plain.augment, False, plain.roi.augment, plain.architecture, plain.schedule)
    assert recipe.epochs == RECIPES["cxr-sim"].epochs  # what was not given comes from the recipe
    assert _recipe("--warm-start").warm_start is True and _recipe("--no-warm-start") == TrainRecipe()


def test_bad_values_are_refused_by_the_dataclasses_with_or_without_a_recipe():
    for argv in (("--augment", "x"), ("--recipe", "cxr-sim", "--roi-loss", "x"), ("--recipe", "cxr-sim", "--epochs", "0")):
        with pytest.raises(ValueError):
            _recipe(*argv)
