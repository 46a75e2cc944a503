"""Result containers of the scoring functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AlignmentScores", "empty_scores"]


@dataclass(frozen=True, eq=False)
class AlignmentScores:
    """How well each image's Grad-CAM matches its ROI (docs/contract.md). Each field is float32 ``[B]``.

    Attributes:
        dice: Dice of the thresholded map against the ROI; NaN where the ROI is unknown or the
            item's inputs were not finite.
        soft_dice: ``2 Σ L·G / (Σ L + Σ G)`` on the normalised map.
        roi_energy: share of the map's mass inside the ROI (energy-based pointing game).
        pointing_hit: 1.0 when the map's peak lies in the ROI, else 0.0.
        invalid: bool ``[B]``, items whose features or weights held NaN/Inf.
    """

    dice: torch.Tensor
    soft_dice: torch.Tensor
    roi_energy: torch.Tensor
    pointing_hit: torch.Tensor
    invalid: torch.Tensor

    @property
    def misalignment(self) -> torch.Tensor:
        """``1 − Dice``: the acquisition criterion (NaN stays NaN)."""
        return 1.0 - self.dice

    @property
    def n_invalid(self) -> int:
        return int(self.invalid.sum())

    def __len__(self) -> int:
        return int(self.dice.shape[0])


def empty_scores(batch: int, device: torch.device) -> AlignmentScores:
    """NaN-filled scores to be written chunk by chunk; whatever is not written stays NaN, never 0."""
    nan = lambda: torch.full((batch,), float("nan"), dtype=torch.float32, device=device)  # noqa: E731
    return AlignmentScores(nan(), nan(), nan(), nan(), torch.zeros(batch, dtype=torch.bool, device=device))
