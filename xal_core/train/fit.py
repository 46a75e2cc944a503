"""``fit``: train a backbone with early stopping and write an xal checkpoint.

Mixed precision runs on CUDA only (float16 autocast with gradient scaling); on the CPU training is
float32 and, with a fixed ``TrainConfig.seed`` and the same initial weights, repeats bit for bit
(``fit`` seeds torch's global generator with it, for dropout and anything else that draws from it).
The checkpoint records the architecture, the class names, the preprocessing (input size, channels,
intensity normalisation: the model is trained on ``(x - mean) / std``) and the training config, so
``xal export`` needs nothing else.

With ``rois`` (the labelled items' ROI masks) training can use the expert's ROIs: a CAM–ROI loss
term (``roi_loss.py``) and/or the ROI-guided background swap (``roi_swap.py``), per ``TrainConfig``.
The swap happens first, on the normalised batch; the augmentation then moves the ROI masks with
their images, so the loss compares the CAM with where the ROI really is. Validation loss (early
stopping) is the cross-entropy alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from xal_core.models.checkpoint import Checkpoint, save_checkpoint
from xal_core.models.head import GapLinearSplit, split_gap_linear
from xal_core.models.metadata import Preprocessing

from .config import TrainConfig
from .data import as_dataset, class_weights, split, summarise, with_rois
from .roi_loss import roi_cam_loss
from .roi_swap import roi_swap


@dataclass
class FitResult:
    """The trained model (best validation epoch, eval mode) and how training went."""

    model: nn.Module
    checkpoint: Checkpoint
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    checkpoint_path: Path | None = None


def fit(
    model: nn.Module,
    data: Dataset | torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    config: TrainConfig | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    preprocessing: Preprocessing | None = None,
    val_data: Dataset | torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    rois: torch.Tensor | None = None,
) -> FitResult:
    """Train ``model`` (a backbone from ``build_backbone``) on images and integer labels.

    Args:
        data: a Dataset of ``(image [C,H,W], label)`` or a tensor ``[N,C,H,W]`` with ``labels [N]``.
        config: the training settings (``TrainConfig()`` by default).
        class_names: K names in label order (default ``class_0 …``).
        preprocessing: the intensity normalisation; by default the per-channel mean and std of the
            training split.
        val_data / val_labels: a validation set; otherwise ``config.val_fraction`` is held out.
        checkpoint_path: where to write the best checkpoint (``.pt`` or ``.safetensors``).
        progress: show a rich progress bar.
        rois: the training items' ROI masks ``[N, H, W]`` (bool or 0/1, the images' frame; all zero
            where the ROI is unknown or known to be empty), with ``data`` as a tensor; needed when
            ``config.roi`` is active (a loss or the swap), ignored otherwise. The items of a
            ``Dataset`` may instead be ``(image, label, mask)``.
    """
    config = config or TrainConfig()
    architecture = getattr(model, "xal_config", None)
    if architecture is None:
        raise ValueError("fit: the model has no xal_config; build it with xal_core.models.build_backbone")
    num_classes = architecture.num_classes
    names = tuple(class_names) if class_names is not None else tuple(f"class_{k}" for k in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"fit: {len(names)} class names for a model with {num_classes} classes")

    dataset = as_dataset(data, labels, "training data")
    if config.uses_rois:
        dataset = with_rois(dataset, rois)
    head = _roi_head(model, config)
    if val_data is not None:
        train_set, val_set = dataset, as_dataset(val_data, val_labels, "validation data")
    elif config.schedule == "cosine":  # a fixed budget: every label trains, nothing is held out to stop on
        train_set, val_set = dataset, None
    else:
        train_set, val_set = split(dataset, config.val_fraction, config.seed)
    if len(train_set) < 2:
        raise ValueError(f"fit: {len(train_set)} training item(s); BatchNorm needs at least 2")
    summary = summarise(train_set, num_classes, config.batch_size)
    if summary.channels != architecture.in_channels:
        raise ValueError(f"fit: images have {summary.channels} channel(s), the model takes {architecture.in_channels}")
    if preprocessing is None:
        preprocessing = Preprocessing(summary.input_size, summary.channels, summary.mean, summary.std)
    elif (preprocessing.channels, preprocessing.input_size) != (summary.channels, summary.input_size):
        raise ValueError(
            f"fit: preprocessing is for {preprocessing.channels}×{preprocessing.input_size}, "
            f"images are {summary.channels}×{summary.input_size}"
        )

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    model = model.to(device)
    mean = torch.tensor(preprocessing.mean, device=device)[:, None, None]
    std = torch.tensor(preprocessing.std, device=device)[:, None, None]
    weights = class_weights(summary.class_counts).to(device) if config.class_weighted else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    shuffle = torch.Generator().manual_seed(config.seed)
    augment_rng = torch.Generator().manual_seed(config.seed + 1)
    swap_rng = torch.Generator().manual_seed(config.seed + 2)  # its own stream: no other draw moves
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        generator=shuffle,
        num_workers=config.num_workers,
        drop_last=len(train_set) % config.batch_size == 1 and len(train_set) > 1,  # BatchNorm needs 2 per batch
    )
    val_loader = DataLoader(val_set, batch_size=config.batch_size) if val_set is not None else None
    steps = config.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1)) \
        if config.schedule == "cosine" else None

    def step_loss(batch: list, train: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(loss, logits, ROI term)`` of one batch; the ROI parts only when training."""
        images, targets = batch[0], batch[1].to(device).long()
        masks = batch[2].to(device) if train and config.uses_rois else None
        images = (images.to(device, torch.float32) - mean) / std
        if masks is not None and config.roi.augment == "swap":
            images, _ = roi_swap(images, targets, masks.bool(), prob=config.roi.swap_prob,
                                 dilate_px=config.roi.dilate, source=config.roi.swap_source, generator=swap_rng)
        if train:
            images, masks = config.augment.transform(images, augment_rng, masks if head is not None else None)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            if head is not None and train:
                features = head.trunk(images)
                logits = head.linear(features.mean(dim=(2, 3))).float()
            else:
                logits = model(images).float()
        loss = F.cross_entropy(logits, targets, weight=weights)
        roi_term = 0.0
        if head is not None and train:
            per_item = roi_cam_loss(features, head.linear.weight, targets, masks, config.roi.loss)
            roi_term = float(per_item.detach().sum()) / len(targets)
            loss = loss + config.roi.weight * per_item.sum() / len(targets)
        return loss, logits, roi_term

    history: list[dict] = []
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    stopped_early = False
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), transient=True, disable=not progress,
    )
    with bar:
        epochs_task = bar.add_task("epochs", total=config.epochs, status="")
        for epoch in range(1, config.epochs + 1):
            model.train()
            batches_task = bar.add_task(f"epoch {epoch}", total=len(train_loader), status="")
            train_loss, roi_loss, seen = 0.0, 0.0, 0
            for batch in train_loader:
                optimizer.zero_grad(set_to_none=True)
                loss, _, roi_term = step_loss(batch, train=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                train_loss += float(loss.detach()) * len(batch[1])
                roi_loss += roi_term * len(batch[1])
                seen += len(batch[1])
                bar.update(batches_task, advance=1, status=f"loss {float(loss.detach()):.4f}")
            bar.remove_task(batches_task)
            record = {"epoch": epoch, "train_loss": train_loss / max(seen, 1)}
            if head is not None:
                record["train_roi_loss"] = roi_loss / max(seen, 1)
            # Early stopping reads the validation loss every epoch; a cosine budget reads nothing, so
            # the validation set is scored once, after the last epoch, for the history alone.
            if val_loader is not None and (scheduler is None or epoch == config.epochs):
                record.update(_evaluate(model, val_loader, step_loss))
            history.append(record)
            monitored = record.get("val_loss", record["train_loss"])
            keep_last = val_loader is None or scheduler is not None  # cosine: the budget's last epoch
            if keep_last or monitored < best[0] - config.min_delta:
                best = (monitored, epoch, None if scheduler is not None else copy.deepcopy(model.state_dict()))
            bar.update(epochs_task, advance=1, status=_status(record))
            if scheduler is None and val_loader is not None and epoch - best[1] >= config.patience:
                stopped_early = epoch < config.epochs
                break

    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    checkpoint = Checkpoint(
        architecture=architecture,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        class_names=names,
        preprocessing=preprocessing,
        config={"train": config.to_dict(), "history": history, "best_epoch": best[1], "class_counts": summary.class_counts.tolist()},
    )
    saved = save_checkpoint(checkpoint, checkpoint_path) if checkpoint_path is not None else None
    return FitResult(model, checkpoint, history, best[1], stopped_early, saved)


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, step_loss) -> dict:
    model.eval()
    total, correct, seen = 0.0, 0, 0
    for batch in loader:
        targets = torch.as_tensor(batch[1]).long()
        loss, logits, _ = step_loss(batch, train=False)
        total += float(loss) * len(targets)
        correct += int((logits.argmax(1).cpu() == targets).sum())
        seen += len(targets)
    return {"val_loss": total / max(seen, 1), "val_accuracy": correct / max(seen, 1)}


def _roi_head(model: nn.Module, config: TrainConfig) -> GapLinearSplit | None:
    """The trunk/head split the ROI loss reads the CAM from; ``None`` without an ROI loss."""
    if config.roi.loss == "none":
        return None
    head = split_gap_linear(model)
    if head is None:
        raise ValueError(f"fit: roi_loss {config.roi.loss!r} needs a backbone with a GAP + linear head "
                         f"(analytic Grad-CAM); {type(model).__name__} has none")
    return head


def _status(record: dict) -> str:
    parts = [f"train {record['train_loss']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val {record['val_loss']:.4f} acc {record['val_accuracy']:.3f}")
    return " ".join(parts)
