"""What the page reads: the batch as JSON, an item's pixels, its Grad-CAM tile.

Everything is looked up by item id in the open batch (``AnnotationDesk.batch_item``): the page can
show only what the run acquired and still asks about, read from the run's own pool store, never a
path a request names.

* **pixels** are float32, little-endian, ``H × W`` (channels averaged), with the frame in the
  ``X-Height`` / ``X-Width`` headers: the page does window/level itself, so a 16-bit
  DICOM-derived image keeps its full range instead of a server-chosen 8-bit rendering;
* **source pixels** are the same at the source file's own resolution (``SourceImages``), where
  the dataset can be read back (not for generated data);
* **the CAM** is that of the model that acquired the item (its arm's checkpoint of the round
  before), of the predicted class, normalised and upsampled as in the contract, coloured by the
  run report's colour map (``cam_rgba``), as a PNG. Items of round 0 were picked at random, before
  any model: they have none.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from xal_core.loop.annotations import Annotation, BoxRoi
from xal_core.loop.learner import checkpoint_path
from xal_core.loop.oracle import AnnotationDesk, BatchItem

__all__ = ["CamTiles", "SourceImages", "batch_json", "display_pixels"]


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _answer_json(answer: Annotation | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    roi = answer.roi
    if roi is None:
        drawn: dict[str, Any] = {"kind": "none"}
    elif isinstance(roi, BoxRoi):
        drawn = {"kind": "no finding"} if not roi.boxes else {"kind": "boxes", "boxes": [list(b) for b in roi.boxes]}
    else:
        drawn = {"kind": "mask", "pixels": int(roi.to_mask().sum())}
    return {"label": answer.label, "label_name": answer.label_name, "roi": drawn, "annotator": answer.annotator,
            "time": answer.time}


def item_json(item: BatchItem) -> dict[str, Any]:
    row = item.record.row
    return {
        "item_id": row.item_id, "source_id": row.source_id, "strategy": item.record.arm.strategy,
        "seed": item.record.arm.seed, "round": item.record.round, "rank": row.rank,
        "initial": item.record.round == 0,
        "score": _number(row.score), "uncertainty": _number(row.uncertainty), "dice": _number(row.dice),
        "soft_dice": _number(row.soft_dice), "predicted_class": row.predicted_class,
        "probabilities": None if row.probabilities is None else [_number(p) for p in row.probabilities],
        "model_version": item.record.model_version, "answer": _answer_json(item.answer),
    }


def batch_json(desk: AnnotationDesk, *, annotator: str) -> dict[str, Any]:
    items = desk.batch()
    done = sum(item.answer is not None for item in items)
    return {"classes": list(desk.class_names), "roi_format": desk.pool.roi_format, "frame": list(desk.pool.size),
            "annotator": annotator, "done": done, "total": len(items), "items": [item_json(i) for i in items]}


def display_pixels(desk: AnnotationDesk, item_id: int) -> np.ndarray:
    """float32 ``[H, W]``: the pool image, channels averaged (as the report's overlays show it)."""
    image = desk.pool.images([item_id])[0].numpy()
    return np.ascontiguousarray(image.mean(axis=0), dtype="<f4")


MAX_SOURCE_SIDE = 2048  # a 3 000 px X-ray is shown at most this big (antialiased): 16 MB of float32, not 36


class SourceImages:
    """Batch items' images at their source's own resolution, read back from the dataset's files.

    The run's ``data/data.json`` names the dataset and its folder; the adapter is reopened once
    (its listing, no pixels) and finds an item's file from its source id (``source_image``: the
    same path checks and pixel cap as ingest). Generated data (the synthetic benchmark) and moved
    folders have none: the page then shows the pool image, and says why.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.record = json.loads((Path(run_dir) / "data" / "data.json").read_text())
        self._dataset: Any = None
        self._failure: str | None = None
        self._lock = threading.Lock()

    def pixels(self, source_id: str) -> np.ndarray | str:
        """float32 ``[H, W]`` (channels averaged, at most ``MAX_SOURCE_SIDE`` a side), or why there is none."""
        import torch

        from xal_core.data import ItemError
        from xal_core.data.item import resize_image
        from xal_core.loop.experiment import pool_source

        with self._lock:
            if self._dataset is None and self._failure is None:
                try:
                    self._dataset = pool_source(self.record)
                except (OSError, ValueError) as error:
                    self._failure = f"the {self.record['dataset']} folder the run was made from cannot be opened ({error})"
            if self._failure is not None:
                return self._failure
            try:
                image = self._dataset.source_image(source_id)
            except (OSError, ValueError, ItemError) as error:
                return f"the source file of {source_id!r} cannot be read ({error})"
        if image is None:
            return f"no source file for {source_id!r} ({self.record['dataset']} data): the pool image is the original"
        image = image.mean(axis=0) if image.ndim == 3 else image
        height, width = image.shape
        if max(height, width) > MAX_SOURCE_SIDE:
            scale = MAX_SOURCE_SIDE / max(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = resize_image(torch.from_numpy(np.ascontiguousarray(image)), size)[0].numpy()
        return np.ascontiguousarray(image, dtype="<f4")


class CamTiles:
    """Grad-CAM tiles of batch items, each computed once; a couple of round models kept loaded."""

    def __init__(self, run_dir: str | Path, desk: AnnotationDesk, *, models: int = 2, tiles: int = 256) -> None:
        self.run_dir = Path(run_dir)
        self.desk = desk
        self._models: OrderedDict[Path, Any] = OrderedDict()
        self._tiles: OrderedDict[tuple[Path, int], bytes] = OrderedDict()
        self._limits = (models, tiles)
        self._lock = threading.Lock()  # one forward pass at a time; torch uses the cores itself

    def png(self, item: BatchItem) -> bytes | str:
        """The tile's PNG bytes, or why there is none."""
        if item.record.round == 0:
            return "picked at random before any model was trained (round 0): no Grad-CAM"
        path = checkpoint_path(self.run_dir, item.record.arm, item.record.round - 1)
        if not path.is_file():
            return f"the model of round {item.record.round - 1} is no longer on disk"
        key = (path, item.item_id)
        with self._lock:
            if key not in self._tiles:
                self._tiles[key] = self._render(path, item.item_id)
                while len(self._tiles) > self._limits[1]:
                    self._tiles.popitem(last=False)
            return self._tiles[key]

    def _render(self, path: Path, item_id: int) -> bytes:
        from PIL import Image

        from xal_core.loop.report.overlays import cam_maps, cam_rgba

        model, preprocessing = self._model(path)
        cams, _ = cam_maps(model, self.desk.pool.images([item_id]), normalise=preprocessing)
        buffer = io.BytesIO()
        Image.fromarray(cam_rgba(cams[0]), mode="RGBA").save(buffer, format="PNG")
        return buffer.getvalue()

    def _model(self, path: Path):
        from xal_core.models import ExplainableModel, load_checkpoint

        if path not in self._models:
            saved = load_checkpoint(path)
            self._models[path] = (ExplainableModel(saved.build()).eval(), saved.preprocessing)
            while len(self._models) > self._limits[0]:
                self._models.popitem(last=False)
        self._models.move_to_end(path)
        return self._models[path]
