"""The one scoring function at the centre of xal (docs/architecture.md, "The flow of data").

``score_batch`` maps a batch of model outputs ``(logits, feature maps, CAM weights)`` and ROIs to
per-item scores. The library, the gRPC service and distributed workers all call it, so a ranking
is the same wherever it is computed. The heavy steps go through ``xal_kernels`` dispatch: Triton on
CUDA tensors, the separable CPU path otherwise. Its parameters are a ``ScoringConfig``
(``xal_core.scoring.parameters``, re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import xal_kernels
from xal_core.scoring import Roi, ScoringConfig

__all__ = ["ScoringConfig", "BatchScores", "score_batch"]


@dataclass(frozen=True, eq=False)
class BatchScores:
    """Per-item scores of one batch (all ``[b]``, on the CPU).

    ``score`` is the dual score for ``fusion="weighted"``; for ``fusion="rank"`` it is NaN here and
    is computed once the whole pool has been seen (see ``rank_pool``).
    """

    ids: torch.Tensor
    uncertainty: torch.Tensor
    dice: torch.Tensor
    soft_dice: torch.Tensor
    roi_energy: torch.Tensor
    pointing_hit: torch.Tensor
    predicted_class: torch.Tensor
    probabilities: torch.Tensor  # [b, K]
    invalid: torch.Tensor
    excluded: torch.Tensor
    score: torch.Tensor

    @classmethod
    def empty(cls, classes: int) -> BatchScores:
        """No items, with the dtypes ``score_batch`` gives float32 inputs: what a skipped chunk
        (one that failed its checksum) contributes to a ranking."""
        real = torch.zeros(0, dtype=torch.float32)
        return cls(ids=torch.zeros(0, dtype=torch.int64), uncertainty=real, dice=real, soft_dice=real,
                   roi_energy=real, pointing_hit=real, predicted_class=torch.zeros(0, dtype=torch.int64),
                   probabilities=torch.zeros(0, classes, dtype=torch.float32), invalid=torch.zeros(0, dtype=torch.bool),
                   excluded=torch.zeros(0, dtype=torch.bool), score=torch.zeros(0, dtype=torch.float64))

    def columns(self) -> dict[str, torch.Tensor]:
        """The per-item values a ranking reports, by name."""
        return {
            "uncertainty": self.uncertainty,
            "dice": self.dice,
            "soft_dice": self.soft_dice,
            "roi_energy": self.roi_energy,
            "pointing_hit": self.pointing_hit,
            "predicted_class": self.predicted_class,
            "probabilities": self.probabilities,
        }


def score_batch(
    ids: torch.Tensor,
    logits: torch.Tensor,
    features: torch.Tensor,
    cam_weights: torch.Tensor,
    roi: Roi,
    config: ScoringConfig = ScoringConfig(),
    *,
    kernel_threads: int | None = None,
) -> BatchScores:
    """Score one batch. ``ids`` int64 ``[b]``; ``logits [b, K]``; the rest as in ``cam_alignment``.

    ``kernel_threads``: threads of the compiled CPU kernel, where CPU tensors go to it (default:
    ``torch.get_num_threads()``); a scorer that runs the kernel beside a forward pass gives it its
    share of the cores (``xal_core.models.runtime.ThreadSplit``). Other routes ignore it.
    """
    ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.dtype.is_floating_point:
        raise ValueError(f"ids: expected a 1-D integer tensor, got {ids.dtype} {tuple(ids.shape)}")
    if logits.dim() != 2 or logits.shape[0] != ids.shape[0]:
        raise ValueError(f"logits: expected shape [{ids.shape[0]}, K], got {tuple(logits.shape)}")
    if roi.device != features.device:  # pool ROIs are read on the host; the model may run on a GPU
        roi = roi.to(features.device)
    alignment = _alignment(features, cam_weights, roi, config.threshold, kernel_threads)
    u, fused = xal_kernels.uncertainty_and_dual_score(
        logits, alignment, kind=config.uncertainty, weight=config.weight, method="weighted",
        missing_roi=config.missing_roi,
    )
    score = fused.score if config.fusion == "weighted" else torch.full_like(fused.score, float("nan"))
    probabilities = torch.softmax(logits.float(), dim=1)
    cpu = lambda t: t.detach().cpu()  # noqa: E731
    return BatchScores(
        ids=cpu(ids).to(torch.int64),
        uncertainty=cpu(u),
        dice=cpu(alignment.dice),
        soft_dice=cpu(alignment.soft_dice),
        roi_energy=cpu(alignment.roi_energy),
        pointing_hit=cpu(alignment.pointing_hit),
        predicted_class=cpu(probabilities.argmax(dim=1)),
        probabilities=cpu(probabilities),
        invalid=cpu(fused.invalid),
        excluded=cpu(fused.excluded),
        score=cpu(score),
    )


def _alignment(features: torch.Tensor, cam_weights: torch.Tensor, roi: Roi, threshold: float,
               kernel_threads: int | None):
    """``xal_kernels.cam_alignment``; with ``kernel_threads``, the compiled CPU kernel on that many
    threads where the dispatch routes these features to it (the dispatch itself takes no threads)."""
    if kernel_threads is not None and xal_kernels.backend_for(features) == "numba":
        from xal_kernels import cpu_alignment

        return cpu_alignment.cam_alignment(features, cam_weights, roi, threshold=threshold, threads=kernel_threads)
    return xal_kernels.cam_alignment(features, cam_weights, roi, threshold=threshold)
