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
