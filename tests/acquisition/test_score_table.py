"""ScoreTable: conversion and the messages of its checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xal_core.acquisition.strategies import ScoreTable

IDS = np.array([3, 1, 2])
PROBABILITIES = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
DICE = np.array([0.5, np.nan, 1.0])


def make(**columns) -> ScoreTable:
    return ScoreTable(**{"ids": IDS, "probabilities": PROBABILITIES, "dice": DICE, **columns})


def test_columns_are_converted_to_numpy():
    table = ScoreTable(
        ids=torch.tensor([3, 1, 2], dtype=torch.int32),
        probabilities=torch.tensor(PROBABILITIES, dtype=torch.float32),
        dice=[0.5, float("nan"), 1.0],
        invalid=torch.tensor([False, True, False]),
    )
    assert table.ids.dtype == np.int64 and table.probabilities.dtype == np.float64 and table.dice.dtype == np.float64
    assert table.invalid.dtype == np.bool_ and len(table) == 3
    assert table.known_roi.tolist() == [True, False, True]
    assert make().invalid_mask.tolist() == [False, False, False]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"ids": np.array([[3, 1, 2]])}, "ScoreTable.ids: expected shape \\[N\\]"),
        ({"ids": np.array([3.0, 1.0, 2.0])}, "ScoreTable.ids: expected integers"),
        ({"ids": np.array([3, 1, 3])}, "ScoreTable.ids: id 3 appears more than once"),
        ({"probabilities": PROBABILITIES[:2]}, "ScoreTable.probabilities: expected shape \\[N, K\\] with N = 3, got \\(2, 2\\)"),
        ({"probabilities": np.ones((3, 1))}, "ScoreTable.probabilities: needs K >= 2"),
        ({"probabilities": np.array([[2.0, -1.0], [0.5, 0.5], [1.0, 0.0]])}, "row of id 3 is not a probability distribution"),
        ({"probabilities": np.array([[0.2, 0.8], [3.0, 1.0], [1.0, 0.0]])}, "row of id 1 .*pass softmax outputs, not logits"),
        ({"dice": np.array([0.5, 1.5, 1.0])}, "ScoreTable.dice: expected values in \\[0, 1\\] or NaN .* 1.5 for id 1"),
        ({"dice": np.array([0.5, np.inf, 1.0])}, "ScoreTable.dice: expected values in \\[0, 1\\]"),
        ({"dice": None}, "ScoreTable.dice: is required"),
        ({"dice": np.array([0.5, 0.1])}, "ScoreTable.dice: expected shape \\[3\\], got \\(2,\\)"),
        ({"soft_dice": np.array([0.5, -0.1, 1.0])}, "ScoreTable.soft_dice: expected values in \\[0, 1\\]"),
        ({"invalid": np.array([0, 1, 0])}, "ScoreTable.invalid: expected a bool column"),
        ({"invalid": np.array([False, True])}, "ScoreTable.invalid: expected shape \\[3\\]"),
        ({"mc_probabilities": np.full((2, 3, 3), 1 / 3)}, "ScoreTable.mc_probabilities: expected shape \\[T, 3, 2\\]"),
        ({"mc_probabilities": np.zeros((0, 3, 2))}, "needs at least one stochastic pass"),
        ({"mc_probabilities": np.full((2, 3, 2), 0.7)}, "mc_probabilities: the row of id 3 is not a probability"),
        ({"embeddings": np.ones(3)}, "ScoreTable.embeddings: expected shape \\[N, D\\] with N = 3"),
        ({"embeddings": np.ones((3, 0))}, "needs D >= 1"),
        ({"embeddings": np.array([["a"], ["b"], ["c"]])}, "ScoreTable.embeddings: expected numbers"),
    ],
)
def test_structural_problems_name_the_column(columns, message):
    with pytest.raises(ValueError, match=message):
        make(**columns)


def test_non_finite_rows_are_accepted_and_left_to_the_strategies():
    probabilities = PROBABILITIES.copy()
    probabilities[1] = np.nan
    assert np.isnan(make(probabilities=probabilities).probabilities[1]).all()


def test_the_table_is_immutable():
    with pytest.raises(AttributeError):
        make().ids = np.array([1, 2, 3])  # type: ignore[misc]
