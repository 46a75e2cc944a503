"""What the page reads: the batch as JSON, an item's pixels, its Grad-CAM tile, the done state.

Everything is looked up by item id in the open batch (``AnnotationDesk.batch_item``): the page can
show only what the run acquired and still asks about, read from the run's own pool store, never a
path a request names.

* **pixels** are ``uint16`` little-endian, ``H × W`` (channels averaged), a linear map of the
  image's values: ``value = X-Offset + X-Scale × u16`` (:func:`encode_pixels`). Integer data whose
  range fits 16 bits (a DICOM's stored values) travels exactly (scale 1); other data is quantised
  to 1/65 535 of its range, far below what a display shows. Half the bytes of float32 before
  compression; the app gzips them for clients that accept it. The page does window/level itself
  on the decoded values, so a 16-bit image keeps its full range;
* **source pixels** are the same at the source file's own resolution (:class:`SourceImages`),
  where the dataset can be read back (not for generated data). A DICOM is served as its modality
  values (after the rescale, before any window: Hounsfield units for CT), and ``X-Image-Info``
  carries its own VOI windows, whether it is ``MONOCHROME1`` (shown inverted) and its units, so
  the page offers the file's windows and, for CT, body-part presets;
* **the CAM** is that of the model that acquired the item (its arm's checkpoint of the round
  before), of the predicted class, normalised and upsampled as in the contract, coloured by the
  run report's colour map (``cam_rgba``; :func:`cam_legend` gives the page its colours), as a PNG.
  Items of round 0 were picked at random, before any model: they have none;
* **why it was picked** is said in words (:func:`pick_reason`), the raw scores beside it.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from xal_core.loop.annotations import Annotation, BoxRoi
from xal_core.loop.learner import checkpoint_path
from xal_core.loop.oracle import AnnotationDesk, BatchItem

__all__ = ["CamTiles", "SourceImages", "answer_json", "batch_json", "cam_legend", "display_pixels",
           "encode_pixels", "pick_reason"]

POOL_INFO: dict[str, Any] = {"units": "pool", "windows": [], "invert": False}


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def answer_json(answer: Annotation | None, revision: int = 0, revisable: bool = False, *,
                with_mask: bool = False) -> dict[str, Any] | None:
    """The answer as the page shows it; a mask's packed bits only when ``with_mask`` (the item's own
    ``GET …/answer``; the batch, polled every few seconds, carries just its pixel count)."""
    if answer is None:
        return None
    roi = answer.roi
    if roi is None:
        drawn: dict[str, Any] = {"kind": "none"}
    elif isinstance(roi, BoxRoi):
        drawn = {"kind": "no finding"} if not roi.boxes else {"kind": "boxes", "boxes": [list(b) for b in roi.boxes]}
    else:
        drawn = {"kind": "mask", "pixels": int(roi.to_mask().sum()), "height": roi.height, "width": roi.width}
        if with_mask:
            import base64

            drawn["packed"] = base64.b64encode(roi.packed).decode("ascii")
    return {"label": answer.label, "label_name": answer.label_name, "roi": drawn, "annotator": answer.annotator,
            "time": answer.time, "revision": revision, "revisable": revisable}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_UNSURE = {"entropy", "margin", "least_confidence", "bald"}


def pick_reason(item: BatchItem, classes: tuple[str, ...], picked_in_round: int) -> dict[str, Any]:
    """Why the item was acquired, in words a reader understands: ``{"summary", "details"}``."""
    record, row = item.record, item.record.row
    strategy = record.arm.strategy
    if record.round == 0:
        return {"summary": "Picked at random for the first labels, before any model existed: its choice says "
                           "nothing about the model.", "details": []}
    details: list[str] = []
    summary = (f"Picked {_ordinal(row.rank + 1)} of the {picked_in_round} images the {strategy} strategy chose "
               f"in round {record.round}, using the model trained on the labels before it.")
    probabilities = [p for p in (row.probabilities or ()) if p is not None and math.isfinite(p)]
    if len(probabilities) == len(classes) >= 2:
        order = sorted(range(len(classes)), key=lambda k: -probabilities[k])
        first, second = order[0], order[1]
        top = probabilities[first]
        mood = ("nearly a coin toss" if top < 0.6 else "unsure" if top < 0.8 else "fairly sure" if top < 0.95
                else "confident")
        details.append(f"The model was {mood}: {classes[first]} {top:.0%}, {classes[second]} "
                       f"{probabilities[second]:.0%}.")
    dice = _number(row.dice)
    if dice is not None:
        overlap = "hardly overlaps" if dice < 0.2 else "partly overlaps" if dice < 0.5 else "mostly overlaps"
        details.append(f"Where the model looked (its Grad-CAM) {overlap} the region expected to matter "
                       f"(Dice {dice:.2f}).")
    if strategy == "random":
        details.append("The random arm picks without looking: a baseline for the others.")
    elif strategy in _UNSURE:
        details.append(f"The {strategy} strategy asks first about the images the model is least sure of.")
    elif strategy in ("dual", "dual_rank"):
        details.append("The dual strategy asks first about images the model is unsure of and whose Grad-CAM "
                       "looks away from the expected region.")
    elif strategy == "misalignment":
        details.append("The misalignment strategy asks first about images whose Grad-CAM looks away from the "
                       "expected region.")
    return {"summary": summary, "details": details}


def item_json(item: BatchItem, classes: tuple[str, ...], picked_in_round: int) -> dict[str, Any]:
    row = item.record.row
    return {
        "item_id": row.item_id, "source_id": row.source_id, "strategy": item.record.arm.strategy,
        "seed": item.record.arm.seed, "round": item.record.round, "rank": row.rank,
        "initial": item.record.round == 0,
        "score": _number(row.score), "uncertainty": _number(row.uncertainty), "dice": _number(row.dice),
        "soft_dice": _number(row.soft_dice), "predicted_class": row.predicted_class,
        "probabilities": None if row.probabilities is None else [_number(p) for p in row.probabilities],
        "model_version": item.record.model_version,
        "reason": pick_reason(item, classes, picked_in_round),
        "answer": answer_json(item.answer, item.revision, item.revisable),
    }


def cam_legend(stops: int = 9) -> list[str]:
    """The CAM tile's colours from 0 (low) to 1 (high), as CSS hex: the page's legend."""
    from xal_core.loop.report.overlays import cam_rgba

    rgba = cam_rgba(np.linspace(0.0, 1.0, stops, dtype=np.float32)[None, :])[0]
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b, _ in rgba.tolist()]


_LEGEND: list[str] | None = None


def batch_json(desk: AnnotationDesk, *, annotator: str, run_waits: bool = False) -> dict[str, Any]:
    global _LEGEND
    if _LEGEND is None:
        _LEGEND = cam_legend()
    items = desk.batch()
    done = sum(item.answer is not None for item in items)
    per_round = Counter((item.record.arm, item.record.round) for item in items)
    classes = tuple(desk.class_names)
    return {"classes": list(classes), "roi_format": desk.roi_format, "frame": list(desk.pool.size),
            "annotator": annotator, "done": done, "total": len(items), "cam_legend": _LEGEND,
            "items": [item_json(i, classes, per_round[(i.record.arm, i.record.round)]) for i in items],
            "finished": None if items else done_json(desk, run_waits=run_waits)}


def _minutes(seconds: float) -> str:
    return "under a minute" if seconds < 60 else f"about {max(1, round(seconds / 60))} minute" + \
        ("s" if round(seconds / 60) > 1 else "")


def done_json(desk: AnnotationDesk, *, run_waits: bool) -> dict[str, Any]:
    """What the page says when nothing is pending: which round the run trains now and for how long."""
    last = desk.last_batch()
    if last is None:
        return {"round": None, "estimate_seconds": None,
                "title": "Nothing to label yet", "message": "The run has not acquired any image yet."}
    round_, records = last
    durations = desk.round_durations()
    estimate = durations[-1] if durations else None
    try:
        rounds = int(desk.ledger.run_config.get("protocol", {}).get("rounds"))
    except (TypeError, ValueError):
        rounds = None
    took = f"{_minutes(estimate)}, as the previous round took" if estimate is not None else \
        "it is the run's first round, so how long that takes is not known yet"
    title = f"Batch done — training round {round_}" + (f", {_minutes(estimate)}" if estimate is not None else "")
    if not run_waits:
        title = f"Batch done — round {round_} is ready to train"
        message = (f"Every image of round {round_} has an answer ({len(records)} in all). The run trains on them "
                   "when it is started again (xal run with this run folder); serve this page again for its "
                   "next batch.")
    elif rounds is not None and round_ >= rounds:
        message = (f"That was the run's last batch: the run now trains round {round_} on these answers, evaluates "
                   f"it and writes its report ({took}).")
    else:
        message = (f"The run is training round {round_} on these answers, then scores the pool and picks the next "
                   f"batch ({took}). This page shows the next batch by itself.")
    return {"round": round_, "estimate_seconds": estimate, "title": title, "message": message}


def display_pixels(desk: AnnotationDesk, item_id: int) -> np.ndarray:
    """float32 ``[H, W]``: the pool image, channels averaged (as the report's overlays show it)."""
    image = desk.pool.images([item_id])[0].numpy()
    return np.ascontiguousarray(image.mean(axis=0), dtype="<f4")


def encode_pixels(values: np.ndarray, info: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """``uint16`` LE bytes and the headers that decode them (``value = X-Offset + X-Scale × u16``)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, np.nanmin(np.where(finite, values, np.nan)) if finite.any() else 0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    integral = bool(np.array_equal(values, np.round(values)))
    scale = 1.0 if integral and high - low <= 65535 else ((high - low) / 65535 if high > low else 1.0)
    quantised = np.clip(np.rint((values - low) / scale), 0, 65535).astype("<u2")
    headers = {"X-Height": str(values.shape[0]), "X-Width": str(values.shape[1]), "X-Offset": repr(low),
               "X-Scale": repr(scale), "X-Image-Info": json.dumps(info or POOL_INFO, ensure_ascii=True)}
    return quantised.tobytes(), headers


MAX_SOURCE_SIDE = 2048  # a 3 000 px X-ray is shown at most this big (antialiased)
SOURCE_CACHE_BYTES = 256 * 2**20  # DICOMweb sources: instances fetched for the page, kept in RUN_DIR/source-cache/


def _printable(text: object, limit: int = 40) -> str:
    return "".join(c for c in str(text) if 32 <= ord(c) < 127)[:limit].strip()


def _dicom_values(path: Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A DICOM's modality values (``[H, W]`` float64) and its VOI windows; None when its VOI is a LUT
    (not a window: the decoded image, the LUT applied, is then shown as it is)."""
    import warnings

    import pydicom
    from pydicom.pixels import apply_modality_lut

    from xal_core.data.dicom import declared_shape
    from xal_core.data.guards import check_pixels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
    if "VOILUTSequence" in dataset and "WindowCenter" not in dataset:
        return None
    check_pixels(path, declared_shape(dataset), max_pixels)
    stored = dataset.pixel_array
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        stored = stored[0]
    if stored.ndim == 3:
        return stored.astype(np.float64).mean(axis=-1), {"units": "colour", "windows": [], "invert": False}
    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    windows = []
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        many = lambda v: list(v) if isinstance(v, pydicom.multival.MultiValue) else [v]  # noqa: E731
        centres, widths = many(dataset.WindowCenter), many(dataset.WindowWidth)
        names = many(getattr(dataset, "WindowCenterWidthExplanation", []) or [])
        for n, (centre, width) in enumerate(zip(centres, widths, strict=False)):
            try:
                centre, width = float(centre), float(width)
            except (TypeError, ValueError):
                continue
            if math.isfinite(centre) and math.isfinite(width) and width > 0:
                name = _printable(names[n]) if n < len(names) else ""
                windows.append({"center": centre, "width": width, "name": name or f"file window {n + 1}"})
    modality = _printable(getattr(dataset, "Modality", ""), 16)
    hounsfield = modality == "CT" or _printable(getattr(dataset, "RescaleType", ""), 16).upper() == "HU"
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).strip()
    return values, {"units": "HU" if hounsfield else "stored values", "modality": modality, "windows": windows,
                    "invert": photometric == "MONOCHROME1"}


class SourceImages:
    """Batch items' images at their source's own resolution, read back from the dataset's files.

    The run's ``data/data.json`` names the dataset and its folder; the adapter is reopened once
    (its listing, no pixels) and finds an item's file from its source id (``source_image``: the
    same path checks and pixel cap as ingest). A DICOM record is read here instead, to its
    modality values and windows (``X-Image-Info``). Generated data (the synthetic benchmark) and
    moved folders have none: the page then shows the pool image, and says why.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.record = json.loads((Path(run_dir) / "data" / "data.json").read_text())
        self.run_dir = Path(run_dir)
        self._dataset: Any = None
        self._failure: str | None = None
        self._lock = threading.Lock()

    def pixels(self, source_id: str) -> tuple[np.ndarray, dict[str, Any]] | str:
        """``([H, W]`` values, at most ``MAX_SOURCE_SIDE`` a side; their info``)``, or why there is none."""
        import torch

        from xal_core.data import ItemError
        from xal_core.data.item import resize_image
        from xal_core.loop.experiment import pool_source

        info: dict[str, Any] = {"units": "source", "windows": [], "invert": False}
        with self._lock:
            if self._dataset is None and self._failure is None:
                try:
                    self._dataset = pool_source(self.record)
                    use_cache = getattr(self._dataset, "use_source_cache", None)
                    if use_cache is not None:  # DICOMweb instances (WADO-RS): kept on disk, bounded
                        use_cache(self.run_dir / "source-cache", SOURCE_CACHE_BYTES)
                except (OSError, ValueError) as error:
                    self._failure = f"the {self.record['dataset']} folder the run was made from cannot be opened ({error})"
            if self._failure is not None:
                return self._failure
            try:
                image, info = self._read(source_id, info)
            except (OSError, ValueError, ItemError, AttributeError, KeyError, RuntimeError) as error:
                return f"the source file of {source_id!r} cannot be read ({error})"
        if image is None:
            return f"no source file for {source_id!r} ({self.record['dataset']} data): the pool image is the original"
        image = image.mean(axis=0) if image.ndim == 3 else image
        height, width = image.shape
        if max(height, width) > MAX_SOURCE_SIDE:
            scale = MAX_SOURCE_SIDE / max(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = resize_image(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), size)[0].numpy()
        return np.ascontiguousarray(image, dtype=np.float64), info


    def _read(self, source_id: str, info: dict[str, Any]) -> tuple[np.ndarray | None, dict[str, Any]]:
        from xal_core.data.guards import DEFAULT_MAX_PIXELS

        record_for = getattr(self._dataset, "record_for", None)  # adapters over files (IndexedDataset)
        path = getattr(record_for(source_id), "path", None) if record_for is not None else None
        if isinstance(path, Path) and path.suffix.lower() in (".dcm", ".dicom"):
            read = _dicom_values(path, getattr(self._dataset, "max_pixels", DEFAULT_MAX_PIXELS))
            if read is not None:
                return read
        return self._dataset.source_image(source_id), info


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

