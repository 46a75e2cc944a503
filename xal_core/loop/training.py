"""What one round's model trains on, and with which settings: the loop's side of ``fit``.

* **The labelled set of round r**: the items the arm acquired in rounds ``0 … r`` that are
  annotated, in acquisition order (the ledger's order). Asking by round, not "everything labelled
  now", lets a warm-started round retrain a lost predecessor with the labels that one had.
* **Their ROIs**: the ones the oracle gave with the labels, read from the ledger's annotations —
  for the simulated oracle the pool's stored ROI, for a person the boxes they drew. The test and
  validation splits' ROIs never reach training. Unknown (not drawn) and known-empty ROIs become
  all-zero masks, which the ROI loss and the swap leave out.
* **The ``TrainConfig``** of a ``TrainRecipe``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xal_core.train import TrainConfig
from xal_core.train.augment import augment_preset

from .annotations import roi_batch
from .ledger import Arm, Ledger
from .recipe import TrainRecipe

__all__ = ["RoundTrainingSet", "round_training_set", "train_config"]


@dataclass(frozen=True)
class RoundTrainingSet:
    """``ids`` (int64 ``[N]``, pool rows), ``labels`` (int64 ``[N]``) and, when asked, ``rois`` (bool ``[N, H, W]``)."""

    ids: np.ndarray
    labels: torch.Tensor
    rois: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def round_training_set(ledger: Ledger, arm: Arm, round: int, size: tuple[int, int], *,
                       with_rois: bool) -> RoundTrainingSet:
    """The arm's labelled items acquired in rounds ``<= round`` (and their ROIs when ``with_rois``)."""
    acquired_in = {record.row.item_id: record.round for record in ledger.acquisitions(arm)}
    labeled = {item: label for item, label in ledger.labeled(arm).items() if acquired_in[item] <= round}
    ids = np.fromiter(labeled.keys(), dtype=np.int64, count=len(labeled))
    labels = torch.tensor(list(labeled.values()), dtype=torch.int64)
    rois = None
    if with_rois:
        answers = {answer.item_id: answer.roi for answer in ledger.annotations(arm)}
        rois = roi_batch([answers[int(item)] for item in ids], size).to_masks()
    return RoundTrainingSet(ids, labels, rois)


def train_config(recipe: TrainRecipe, *, seed: int, device: str) -> TrainConfig:
    """``fit``'s settings for one round (fp32: ``amp`` off, as the calibration ran)."""
    return TrainConfig(epochs=recipe.epochs, patience=recipe.patience, batch_size=recipe.batch_size, lr=recipe.lr,
                       val_fraction=recipe.val_fraction, seed=seed, device=device, amp=False, roi=recipe.roi,
                       schedule=recipe.schedule, augment=augment_preset(recipe.augment))
