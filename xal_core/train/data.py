"""Turn what the caller has (tensors or a Dataset) into train/validation subsets, and describe them.

The trainer stays general: it takes any torch ``Dataset`` whose items are ``(image [C,H,W], label)``,
or tensors ``images [N,C,H,W]`` with integer ``labels [N]``. One pass over the training subset gives
the class counts (for the class weights) and the per-channel intensity statistics (for the
normalisation recorded in the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


def as_dataset(data: Dataset | torch.Tensor, labels: torch.Tensor | None, name: str) -> Dataset:
    if isinstance(data, torch.Tensor):
        if labels is None:
            raise ValueError(f"{name}: labels are required when images are a tensor")
        labels = torch.as_tensor(labels)
        if data.dim() != 4:
            raise ValueError(f"{name}: images must be [N, C, H, W], got shape {tuple(data.shape)}")
        if labels.dim() != 1 or labels.shape[0] != data.shape[0]:
            raise ValueError(f"{name}: labels must be [N] with N = {data.shape[0]}, got shape {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
        if not data.is_floating_point():
            data = data.float()
        return TensorDataset(data, labels.long())
    if labels is not None:
        raise ValueError(f"{name}: labels come from the Dataset's items; do not pass them separately")
    if len(data) == 0:
        raise ValueError(f"{name}: empty dataset")
    return data


def with_rois(dataset: Dataset, rois: torch.Tensor | None) -> Dataset:
    """``dataset``'s items as ``(image, label, roi mask)``: from ``rois [N, H, W]`` when given, else the
    dataset must already yield triples. A mask is bool; all-False means no usable ROI."""
    if rois is None:
        first = dataset[0]
        if len(first) != 3:
            raise ValueError("fit: the TrainConfig trains with ROIs (roi_loss / roi_augment) but no rois were given")
        return dataset
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        raise ValueError("fit: rois go with images given as a tensor; a Dataset may yield (image, label, mask) instead")
    images, labels = dataset.tensors
    rois = torch.as_tensor(rois)
    if rois.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"fit: rois must be [N, H, W] = {[images.shape[0], *images.shape[2:]]}, "
                         f"got {list(rois.shape)}")
    if rois.dtype != torch.bool:
        if rois.is_floating_point() and not bool(torch.isfinite(rois).all()):
            raise ValueError("fit: rois hold NaN/Inf")
        rois = rois != 0
    return TensorDataset(images, labels, rois)


def split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """A seeded random hold-out of ``fraction`` of the items (at least one, at most all but one)."""
    n = len(dataset)
    if fraction == 0:
        return dataset, None
    if n < 2:
        raise ValueError(f"training data: {n} item(s) cannot be split into training and validation")
    n_val = min(max(1, round(n * fraction)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


@dataclass(frozen=True)
class DataSummary:
    """Counts and statistics of the training subset."""

    size: int
    channels: int
    input_size: tuple[int, int]
    class_counts: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


def summarise(dataset: Dataset, num_classes: int, batch_size: int) -> DataSummary:
    counts = torch.zeros(num_classes, dtype=torch.long)
    total = total_sq = None
    pixels = 0
    shape = None
    for batch in DataLoader(dataset, batch_size=max(batch_size, 64)):
        images, labels = batch[0].double(), batch[1]  # a third element (ROI masks) is not summarised
        if shape is None:
            shape = tuple(images.shape[1:])
        elif tuple(images.shape[1:]) != shape:
            raise ValueError(f"training data: images of shape {shape} and {tuple(images.shape[1:])}; resize them first")
        labels = torch.as_tensor(labels).long()
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(f"training data: labels must lie in [0, {num_classes}), got {sorted(set(labels.tolist()))}")
        counts += torch.bincount(labels, minlength=num_classes)
        part = images.transpose(0, 1).flatten(1)
        total = part.sum(1) if total is None else total + part.sum(1)
        total_sq = (part**2).sum(1) if total_sq is None else total_sq + (part**2).sum(1)
        pixels += part.shape[1]
    mean = total / pixels
    std = (total_sq / pixels - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
    return DataSummary(len(dataset), shape[0], (shape[1], shape[2]), counts, tuple(mean.tolist()), tuple(std.tolist()))


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K_present · n_k)``; an absent class gets weight 0."""
    present = counts > 0
    weights = torch.zeros(counts.shape[0], dtype=torch.float32)
    weights[present] = counts.sum().float() / (present.sum().float() * counts[present].float())
    return weights
