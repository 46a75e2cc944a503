"""Per-round metrics on the held-out test split: classification and CAM–ROI alignment.

Classification (``classification_metrics``), from integer labels ``[N]`` and class scores ``[N, K]``
(softmax probabilities); the prediction is ``argmax`` (first maximum on ties):

* **accuracy**: share of correct predictions.
* **balanced accuracy**: mean recall over the classes *present in the labels* (a class that is only
  predicted has no recall and is left out, as in scikit-learn's ``balanced_accuracy_score``).
* **macro-F1**: mean of ``2·TP / (2·TP + FP + FN)`` over the classes present in the labels *or* the
  predictions (scikit-learn's ``f1_score(average="macro")`` convention): a class nobody has and
  nobody predicted does not count, a class only predicted counts with F1 = 0.
* **AUROC**: with ``K = 2`` the AUROC of ``p[:, 1]`` for class 1; with ``K > 2`` the one-vs-rest
  macro average over the classes that have both positives and negatives in the labels. Ties in
  the scores count one half (the Mann–Whitney statistic with average ranks, the trapezoidal ROC
  area). NaN when undefined: every label the same class.

Interpretability (``interpretability_metrics``): means of the contract's Dice, soft Dice and ROI
energy (docs/contract.md) over the test items whose ROI is *known*; a known *empty* ROI counts (its
Dice is 1 for a constant map and 0 otherwise, as the contract says). NaN when no ROI is known.
A known item whose CAM inputs were not finite has NaN scores, and the mean is then NaN too:
a broken model is shown, not averaged away.

``evaluate`` runs an ``ExplainableModel`` over the test images and returns both as a
``RoundMetrics``; ``metrics_file`` keeps them in ``metrics.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from xal_core.models.explainable import ExplainableModel
from xal_core.models.metadata import Preprocessing
from xal_core.scoring import DEFAULT_THRESHOLD, Roi, cam_alignment

__all__ = [
    "METRIC_NAMES",
    "Normalise",
    "RoundMetrics",
    "auroc",
    "classification_metrics",
    "evaluate",
    "forward_batches",
    "interpretability_metrics",
]

Normalise = Callable[[torch.Tensor], torch.Tensor] | Preprocessing | None


# ---------------------------------------------------------------------------------- classification
def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and AUROC (conventions in the module docstring).

    Args:
        labels: integers ``[N]`` in ``[0, K)``, ``N >= 1``.
        probabilities: finite class scores ``[N, K]``, ``K >= 2`` (softmax probabilities).

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "auroc"}`` as Python floats.
    """
    labels, scores = _check_classification(labels, probabilities)
    classes = scores.shape[1]
    predictions = scores.argmax(axis=1)
    # confusion[t, p]: items of true class t predicted as p
    confusion = np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)  # items per true class
    predicted = confusion.sum(axis=0)  # items per predicted class
    present = support > 0
    recall = true_positive[present] / support[present]
    seen = present | (predicted > 0)
    f1 = 2 * true_positive[seen] / (support[seen] + predicted[seen])
    return {
        "accuracy": float(true_positive.sum() / labels.shape[0]),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "auroc": _auroc_multi(labels, scores),
    }


def auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the bool labels ``positive``; NaN without both classes.

    Computed as the Mann–Whitney statistic with average ranks, so a tie between a positive and a
    negative counts one half, exactly as the trapezoidal area under the ROC curve.
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if positive.ndim != 1 or scores.shape != positive.shape:
        raise ValueError(f"auroc: expected positive and scores of one shape [N], "
                         f"got {positive.shape} and {scores.shape}")
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _auroc_multi(labels: np.ndarray, scores: np.ndarray) -> float:
    if scores.shape[1] == 2:
        return auroc(labels == 1, scores[:, 1])
    areas = [auroc(labels == c, scores[:, c]) for c in range(scores.shape[1])]
    areas = [a for a in areas if not math.isnan(a)]
    return float(np.mean(areas)) if areas else math.nan


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.shape[0]]  # exclusive
    group_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _check_classification(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = _as_numpy(labels)
    scores = _as_numpy(probabilities)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"probabilities: expected shape [N, K] with K >= 2, got {scores.shape}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels: expected shape [{scores.shape[0]}] to match probabilities, got {labels.shape}")
    if labels.shape[0] == 0:
        raise ValueError("labels: no test items")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integers, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels: classes must lie in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}")
    if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(scores.dtype, np.integer):
        raise ValueError(f"probabilities: expected real numbers, got {scores.dtype}")
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        raise ValueError(f"probabilities: {int(bad.sum())} of {bad.shape[0]} items hold NaN/Inf "
                         f"(first: item {int(np.flatnonzero(bad)[0])})")
    return labels.astype(np.int64), scores.astype(np.float64)


# ---------------------------------------------------------------------------------- interpretability
def interpretability_metrics(
    dice: np.ndarray, soft_dice: np.ndarray, roi_energy: np.ndarray, roi_known: np.ndarray
) -> dict[str, float]:
    """``cam_dice``, ``cam_soft_dice``, ``cam_energy``: means over the items with a known ROI.

    Args:
        dice, soft_dice, roi_energy: per-item scores ``[N]`` (``AlignmentScores`` fields).
        roi_known: bool ``[N]``; False for an unknown ROI (left out). A known empty ROI counts.

    Returns:
        The three means as Python floats; NaN when no ROI is known, or when a known item's score
        is NaN (its CAM inputs were not finite).
    """
    known = _as_numpy(roi_known)
    if known.ndim != 1 or known.dtype != np.bool_:
        raise ValueError(f"roi_known: expected bool [N], got {known.dtype} {known.shape}")
    out = {}
    for name, values in (("cam_dice", dice), ("cam_soft_dice", soft_dice), ("cam_energy", roi_energy)):
        values = _as_numpy(values).astype(np.float64)
        if values.shape != known.shape:
            raise ValueError(f"{name}: expected shape {known.shape} to match roi_known, got {values.shape}")
        out[name] = float(values[known].mean()) if known.any() else math.nan
    return out


# ---------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class RoundMetrics:
    """The test-split metrics of one round (definitions in the module docstring)."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    auroc: float
    cam_dice: float
    cam_soft_dice: float
    cam_energy: float

    def to_row(self, *, strategy: str, seed: int, round: int, labels: int) -> dict[str, object]:
        """One ``metrics.csv`` row: the keys of ``metrics_file.METRICS_COLUMNS`` in order."""
        return {"strategy": str(strategy), "seed": int(seed), "round": int(round), "labels": int(labels),
                **asdict(self)}


#: the metrics of a round, in ``RoundMetrics``' (and ``metrics.csv``'s) order
METRIC_NAMES: tuple[str, ...] = tuple(field.name for field in fields(RoundMetrics))


def forward_batches(
    model: ExplainableModel,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    normalise: Normalise = None,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run ``model`` over ``images [N,C,H,W]`` in eval mode without autograd, batch by batch.

    Yields ``(items, logits, features, cam_weights)`` per batch, on the model's device (images are
    cast to its parameters' dtype), with the CAM weights of the predicted class. ``normalise`` is a callable (``ModelMetadata.normalise``) or
    a ``Preprocessing`` whose ``(x - mean) / std`` is applied to each batch. The model's training
    flag is restored afterwards.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor [N, C, H, W], got {got}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    transform = _normaliser(normalise)
    weights = [p for p in model.parameters() if p.is_floating_point()]
    device = weights[0].device if weights else images.device
    dtype = weights[0].dtype if weights else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # the autograd CAM path re-enables grad for itself
            for start in range(0, images.shape[0], int(batch_size)):
                items = slice(start, min(start + int(batch_size), images.shape[0]))
                batch = images[items].to(device=device, dtype=dtype)
                logits, features, cam_weights = model(transform(batch))
                yield items, logits, features, cam_weights
    finally:
        model.train(was_training)


def evaluate(
    model: ExplainableModel,
    images: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    roi: Roi,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 256,
    normalise: Normalise = None,
) -> RoundMetrics:
    """Classification and CAM–ROI alignment metrics of ``model`` on a test split.

    The Grad-CAM of each image is that of its predicted class, scored against its ROI with
    ``xal_core.scoring.cam_alignment`` (the contract's maths, threshold ``τ = threshold``).

    Args:
        model: the explainable wrapper (``forward → logits, features, cam_weights``).
        images: ``[N, C, H, W]`` test images, before ``normalise``.
        labels: integer ``[N]`` true classes.
        roi: the test images' ROIs (``N`` items; its frame is what the CAM is upsampled to).
        threshold: ``τ`` of the Dice binarisation.
        batch_size: images per forward pass.
        normalise: see ``forward_batches``.
    """
    labels_np = _as_numpy(labels)
    if not isinstance(roi, Roi):
        raise ValueError(f"roi: expected an xal_core.scoring.Roi, got {type(roi).__name__}")
    if isinstance(images, torch.Tensor) and roi.batch_size != images.shape[0]:
        raise ValueError(f"roi: holds {roi.batch_size} items, images hold {images.shape[0]}")
    probabilities, dice, soft_dice, energy = [], [], [], []
    for items, logits, features, cam_weights in forward_batches(model, images, batch_size=batch_size,
                                                                normalise=normalise):
        scores = cam_alignment(features, cam_weights, roi[items].to(features.device), threshold=threshold)
        probabilities.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
        dice.append(scores.dice.cpu().numpy())
        soft_dice.append(scores.soft_dice.cpu().numpy())
        energy.append(scores.roi_energy.cpu().numpy())
    if not probabilities:
        raise ValueError("images: no test items")
    classification = classification_metrics(labels_np, np.concatenate(probabilities))
    alignment = interpretability_metrics(np.concatenate(dice), np.concatenate(soft_dice), np.concatenate(energy),
                                         roi.known.cpu().numpy())
    return RoundMetrics(**classification, **alignment)


def _normaliser(normalise: Normalise) -> Callable[[torch.Tensor], torch.Tensor]:
    if normalise is None:
        return lambda batch: batch
    if isinstance(normalise, Preprocessing):
        def apply(batch: torch.Tensor) -> torch.Tensor:
            mean = torch.tensor(normalise.mean, dtype=batch.dtype, device=batch.device)[:, None, None]
            std = torch.tensor(normalise.std, dtype=batch.dtype, device=batch.device)[:, None, None]
            return (batch - mean) / std
        return apply
    if callable(normalise):
        return normalise
    raise ValueError(f"normalise: expected None, a Preprocessing or a callable, got {type(normalise).__name__}")


def _as_numpy(values: np.ndarray | torch.Tensor | Iterable) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
