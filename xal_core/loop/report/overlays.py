"""Grad-CAM overlays with ROI outlines: the arrays the loop saves, and the grid the report draws.

The loop saves, per strategy at the final round (seed 0), the same ``n`` test images with their
maps to ``RUN_DIR/overlays/<strategy>.npz`` (``save_overlay_arrays`` is the only writer of the
format; ``load_overlay_arrays`` the only reader):

==============  ===================  =================================================================
array           dtype, shape         meaning
==============  ===================  =================================================================
``images``      float32 ``[n,H,W]``  grayscale display image in ``[0, 1]``
``cams``        float32 ``[n,H,W]``  normalised, upsampled Grad-CAM of the predicted class
                                     (docs/contract.md) in ``[0, 1]``; NaN for an item whose CAM inputs
                                     were not finite
``roi``         bool ``[n,H,W]``     ROI mask (all False where unknown)
``roi_known``   bool ``[n]``         False where the ROI is unknown (no outline drawn)
``labels``      int64 ``[n]``        true class
``predictions`` int64 ``[n]``        predicted class
``class_names`` str ``[K]``          class names
``item_ids``    int64 ``[n]``        the test items' indices, to show the same images for every strategy
==============  ===================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from xal_core.loop.metrics import Normalise, forward_batches
from xal_core.models.explainable import ExplainableModel
from xal_core.scoring import Roi, gradcam_maps

__all__ = [
    "OverlayArrays",
    "cam_maps",
    "cam_rgba",
    "load_overlay_arrays",
    "load_overlay_dir",
    "overlay_grid_figure",
    "overlay_path",
    "plot_overlay_grid",
    "save_overlay_arrays",
    "write_overlays",
]


@dataclass(frozen=True, eq=False)
class OverlayArrays:
    """The contents of one overlay ``.npz`` (see the module docstring)."""

    images: np.ndarray
    cams: np.ndarray
    roi: np.ndarray
    roi_known: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    class_names: tuple[str, ...]
    item_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------------- computing
def cam_maps(
    model: ExplainableModel,
    images: torch.Tensor,
    *,
    size: tuple[int, int] | None = None,
    normalise: Normalise = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of the predicted class, normalised and upsampled as in the contract.

    Args:
        model: the explainable wrapper.
        images: ``[n, C, H, W]`` images, before ``normalise``.
        size: the frame ``(H, W)`` the maps are upsampled to; the images' own by default.
        normalise: ``None``, a ``Preprocessing`` or a callable (see ``metrics.forward_batches``).

    Returns:
        ``(cams float32 [n, H, W] in [0, 1], predictions int64 [n])`` as NumPy arrays; an item whose
        CAM inputs are not finite has a NaN map.
    """
    size = tuple(images.shape[-2:]) if size is None else tuple(size)
    cams, predictions = [], []
    for _, logits, features, cam_weights in forward_batches(model, images, batch_size=batch_size,
                                                            normalise=normalise):
        cams.append(gradcam_maps(features, cam_weights, size).cpu().numpy())
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    if not cams:
        return np.zeros((0, *size), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(cams).astype(np.float32), np.concatenate(predictions).astype(np.int64)


def write_overlays(
    path: str | Path,
    model: ExplainableModel,
    images: torch.Tensor,
    roi: Roi,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    item_ids: np.ndarray | torch.Tensor,
    *,
    normalise: Normalise = None,
) -> Path:
    """``cam_maps`` on ``images [n,C,H,W]`` and ``save_overlay_arrays`` in one call (what the loop runs)."""
    cams, predictions = cam_maps(model, images, size=roi.size, normalise=normalise)
    return save_overlay_arrays(path, images=images, cams=cams, roi=roi, labels=labels, predictions=predictions,
                               class_names=class_names, item_ids=item_ids)


# ---------------------------------------------------------------------------------- the file format
def overlay_path(overlays_dir: str | Path, strategy: str) -> Path:
    """``overlays_dir/<strategy>.npz``; the strategy name must be usable as a file name."""
    if not strategy or strategy in (".", "..") or any(c in strategy for c in "/\\\0"):
        raise ValueError(f"strategy: {strategy!r} cannot name an overlay file")
    return Path(overlays_dir) / f"{strategy}.npz"


def save_overlay_arrays(
    path: str | Path,
    *,
    images: np.ndarray | torch.Tensor,
    cams: np.ndarray | torch.Tensor,
    roi: np.ndarray | torch.Tensor | Roi,
    labels: np.ndarray | torch.Tensor,
    predictions: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    item_ids: np.ndarray | torch.Tensor,
    roi_known: np.ndarray | torch.Tensor | None = None,
) -> Path:
    """Check and write one overlay ``.npz`` (format in the module docstring); returns the path.

    ``images`` may be ``[n,H,W]`` or ``[n,C,H,W]`` (channels are averaged); values outside ``[0, 1]``
    are min-max scaled per image for display. ``roi`` may be an ``xal_core.scoring.Roi`` (its masks and
    ``known`` flags are used) or a bool mask ``[n,H,W]`` with ``roi_known`` (default: all known).
    """
    if isinstance(roi, Roi):
        if roi_known is not None:
            raise ValueError("roi_known: give it only with a mask array, a Roi carries its own")
        roi_known = roi.known
        roi = roi.to_masks()
    display = _display_images(_numpy(images))
    n = display.shape[0]
    masks = _numpy(roi)
    known = np.ones(n, dtype=bool) if roi_known is None else _numpy(roi_known)
    arrays = OverlayArrays(
        images=display,
        cams=_numpy(cams).astype(np.float32),
        roi=masks.astype(bool) if masks.dtype != np.bool_ and _is_binary(masks) else masks,
        roi_known=known.astype(bool) if known.dtype != np.bool_ and _is_binary(known) else known,
        labels=_integers(_numpy(labels), "labels"),
        predictions=_integers(_numpy(predictions), "predictions"),
        class_names=tuple(str(name) for name in class_names),
        item_ids=_integers(_numpy(item_ids), "item_ids"),
    )
    _check(arrays, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(
            handle, images=arrays.images, cams=arrays.cams, roi=arrays.roi, roi_known=arrays.roi_known,
            labels=arrays.labels, predictions=arrays.predictions,
            class_names=np.array(arrays.class_names, dtype=np.str_), item_ids=arrays.item_ids,
        )
    return path


def load_overlay_arrays(path: str | Path) -> OverlayArrays:
    """Read and check one overlay ``.npz`` (no pickles are loaded)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("images", "cams", "roi", "labels", "predictions", "class_names", "item_ids")
                   if k not in data]
        if missing:
            raise ValueError(f"{path}: not an overlay file, missing arrays {missing}")
        arrays = OverlayArrays(
            images=data["images"], cams=data["cams"], roi=data["roi"],
            roi_known=data["roi_known"] if "roi_known" in data else np.ones(data["images"].shape[0], dtype=bool),
            labels=data["labels"], predictions=data["predictions"],
            class_names=tuple(str(name) for name in data["class_names"]), item_ids=data["item_ids"],
        )
    _check(arrays, str(path))
    return arrays


def load_overlay_dir(overlays_dir: str | Path, order: Sequence[str] = ()) -> dict[str, OverlayArrays]:
    """Every ``<strategy>.npz`` in ``overlays_dir``: the names in ``order`` first, then the rest sorted."""
    overlays_dir = Path(overlays_dir)
    found = {p.stem: p for p in sorted(overlays_dir.glob("*.npz"))} if overlays_dir.is_dir() else {}
    names = [s for s in order if s in found] + [s for s in found if s not in order]
    return {name: load_overlay_arrays(found[name]) for name in names}


def _check(a: OverlayArrays, where: str) -> None:
    n = a.images.shape[0] if a.images.ndim == 3 else -1
    if a.images.ndim != 3 or a.images.dtype != np.float32:
        raise ValueError(f"{where}: images must be float32 [n, H, W], got {a.images.dtype} {a.images.shape}")
    frame = a.images.shape
    for name in ("cams", "roi"):
        value = getattr(a, name)
        if value.shape != frame:
            raise ValueError(f"{where}: {name} must have the images' shape {frame}, got {value.shape}")
    if a.cams.dtype != np.float32:
        raise ValueError(f"{where}: cams must be float32, got {a.cams.dtype}")
    if a.roi.dtype != np.bool_ or a.roi_known.dtype != np.bool_:
        raise ValueError(f"{where}: roi and roi_known must be bool, got {a.roi.dtype} and {a.roi_known.dtype}")
    finite = a.cams[np.isfinite(a.cams)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"{where}: cams must lie in [0, 1] (normalised maps), got {finite.min()}..{finite.max()}")
    if not np.isfinite(a.images).all() or a.images.min(initial=0) < 0 or a.images.max(initial=0) > 1:
        raise ValueError(f"{where}: images must be finite and in [0, 1]")
    for name in ("roi_known", "labels", "predictions", "item_ids"):
        value = getattr(a, name)
        if value.shape != (n,):
            raise ValueError(f"{where}: {name} must have shape [{n}], got {value.shape}")
    for name in ("labels", "predictions"):
        value = getattr(a, name)
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"{where}: {name} must be integers, got {value.dtype}")
        if n and (value.min() < 0 or value.max() >= len(a.class_names)):
            raise ValueError(f"{where}: {name} must lie in [0, {len(a.class_names)}) (the class names)")
    if len(set(a.item_ids.tolist())) != n:
        raise ValueError(f"{where}: item_ids must be distinct")


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _is_binary(values: np.ndarray) -> bool:
    return np.issubdtype(values.dtype, np.integer) and bool(np.isin(values, (0, 1)).all())


def _integers(values: np.ndarray, name: str) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got {values.dtype}")
    return values.astype(np.int64)


def _display_images(images: np.ndarray) -> np.ndarray:
    if images.ndim == 4:
        images = images.mean(axis=1)
    if images.ndim != 3:
        raise ValueError(f"images: expected [n, H, W] or [n, C, H, W], got {images.shape}")
    images = images.astype(np.float32)
    if images.size and (images.min() < 0 or images.max() > 1):
        low = images.min(axis=(1, 2), keepdims=True)
        span = images.max(axis=(1, 2), keepdims=True) - low
        images = np.where(span > 0, (images - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
    return images


def cam_rgba(cam: np.ndarray, *, cmap: str = "jet") -> np.ndarray:
    """A normalised map ``[H, W]`` in ``[0, 1]`` as opaque ``uint8 [H, W, 4]`` colours of ``cmap``
    (the grid's colour map; the browser annotator's overlay tile, its opacity set by the page).
    NaN (a map whose inputs were not finite) becomes transparent."""
    from matplotlib import colormaps

    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam: expected [H, W], got {cam.shape}")
    finite = np.isfinite(cam)
    colours = colormaps[cmap](np.clip(np.where(finite, cam, 0.0), 0.0, 1.0), bytes=True)
    colours[..., 3] = np.where(finite, 255, 0)
    return colours


# ---------------------------------------------------------------------------------- the grid
def overlay_grid_figure(overlays: Mapping[str, OverlayArrays], *, max_images: int = 8, alpha: float = 0.45,
                        cmap: str = "jet") -> Figure:
    """Rows = strategies, columns = the same test images (matched by ``item_ids``).

    Each cell shows the grayscale image, the CAM as a translucent colour map, the ROI outline in
    green, and a title ``#id`` / ``true → pred`` (red when wrong). The columns are the first
    ``max_images`` ids of the first strategy that every strategy has.
    """
    if not overlays:
        raise ValueError("overlay grid: no strategies")
    names = list(overlays)
    first = overlays[names[0]]
    held = [set(o.item_ids.tolist()) for o in overlays.values()]
    common = [int(i) for i in first.item_ids if all(int(i) in ids for ids in held)][:max_images]
    if not common:
        raise ValueError(f"overlay grid: the strategies {names} share no test item")
    figure = Figure(figsize=(1.9 * len(common) + 0.6, 2.1 * len(names)), layout="constrained")
    axes = figure.subplots(len(names), len(common), squeeze=False)
    for row, name in enumerate(names):
        arrays = overlays[name]
        position = {int(item): index for index, item in enumerate(arrays.item_ids)}
        for column, item in enumerate(common):
            _draw_cell(axes[row, column], arrays, position[item], item, alpha, cmap)
        axes[row, 0].set_ylabel(name, fontsize="medium")
    figure.suptitle("Grad-CAM (colour) of the predicted class; ROI outline in green", fontsize="medium")
    return figure


def plot_overlay_grid(overlays: Mapping[str, OverlayArrays] | str | Path, path: str | Path, *,
                      max_images: int = 8, dpi: int = 110) -> Path:
    """Write the overlay grid as a PNG; ``overlays`` is a mapping or an overlays directory."""
    if not isinstance(overlays, Mapping):
        overlays = load_overlay_dir(overlays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_grid_figure(overlays, max_images=max_images).savefig(path, format="png", dpi=dpi,
                                                                 metadata={"Software": None})
    return path


def _draw_cell(ax, arrays: OverlayArrays, index: int, item: int, alpha: float, cmap: str) -> None:
    ax.imshow(arrays.images[index], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.imshow(arrays.cams[index], cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    mask = arrays.roi[index]
    known = bool(arrays.roi_known[index])
    if known and mask.any() and min(mask.shape) >= 2:
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.0)
    names = arrays.class_names
    true, predicted = int(arrays.labels[index]), int(arrays.predictions[index])
    note = "" if known and mask.any() else ("\nROI unknown" if not known else "\nROI empty")
    if math.isnan(float(np.max(arrays.cams[index], initial=0.0))):
        note += "\nCAM not finite"
    ax.set_title(f"#{item}\n{names[true]} → {names[predicted]}{note}", fontsize="x-small",
                 color="black" if true == predicted else "red")
    ax.set_xticks([])
    ax.set_yticks([])
