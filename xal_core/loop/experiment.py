"""The data of one run: a pool store to acquire from, a held-out test split, a validation split.

Built once per run folder (``RUN_DIR/data/``) and reused when the run resumes, so the pool a
resumed run scores is byte for byte the one it started with. It is written in
``RUN_DIR/.data.partial`` and renamed into place when complete: an interrupted preparation leaves
nothing half written, and the next run starts it afresh. Splits:

* ``synthetic`` and ``generic``: the dataset's own ``pool`` / ``val`` / ``test`` splits;
* ``brats``, ``vindr``, ``siim``: a deterministic ``test_fraction`` of *groups* goes to the test
  split (a group is the part of the item id before the first ``/``: a BraTS case, a SIIM study, a
  VinDr image), so the slices of one patient never sit on both sides; early stopping then holds
  out ``val_fraction`` of the labeled items (the recipe's).

The test split lives in memory (it is evaluated every round); the pool never does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xal_core.data import DEFAULT_ROI_SOURCE, GENERATED_KINDS, ItemError, PoolStore, PoolWriter, open_dataset
from xal_core.data.item import Item
from xal_core.scoring import Roi

from .data_spec import NATIVE_SPLITS, DataSpec

__all__ = ["ExperimentData", "prepare_data", "pool_source"]


@dataclass
class HeldOut:
    """A split held in memory: images ``[n,C,H,W]``, labels ``[n]``, ROIs, source ids."""

    images: torch.Tensor
    labels: torch.Tensor
    roi: Roi
    ids: list[str]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def save(self, path: Path) -> None:
        masks = self.roi.to_masks().numpy()
        np.savez_compressed(path, images=self.images.numpy(), labels=self.labels.numpy(),
                            masks=np.packbits(masks, axis=-1), known=self.roi.known.numpy(),
                            width=np.int64(masks.shape[-1]), ids=np.asarray(self.ids, dtype=np.str_))

    @classmethod
    def load(cls, path: Path) -> HeldOut:
        with np.load(path) as data:
            width = int(data["width"])
            masks = np.unpackbits(data["masks"], axis=-1, count=width).astype(bool)
            roi = Roi.from_masks(torch.from_numpy(masks), known=torch.from_numpy(data["known"]))
            return cls(torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]), roi,
                       data["ids"].tolist())

    @classmethod
    def from_items(cls, items: list[Item], size: tuple[int, int], channels: int) -> HeldOut:
        if not items:
            return cls(torch.zeros(0, channels, *size), torch.zeros(0, dtype=torch.int64),
                       Roi.from_masks(torch.zeros(0, *size, dtype=torch.bool)), [])
        rois = [item.roi for item in items]
        if all(r is None or r.dtype == torch.bool for r in rois):
            masks = torch.stack([r if r is not None else torch.zeros(size, dtype=torch.bool) for r in rois])
            roi = Roi.from_masks(masks, known=[r is not None for r in rois])
        else:  # boxes: rasterised by the contract's pixel-centre rule
            roi = Roi.from_boxes([None if r is None else r.double() for r in rois], size=size)
            roi = Roi.from_masks(roi.to_masks(), known=roi.known)
        return cls(torch.stack([item.image for item in items]).float(),
                   torch.tensor([item.label for item in items], dtype=torch.int64), roi, [item.id for item in items])


@dataclass
class ExperimentData:
    """What a run reads: the pool store (scored each round), the test split, the validation split."""

    root: Path
    pool_path: Path
    class_names: tuple[str, ...]
    size: tuple[int, int]
    channels: int
    test: HeldOut
    val: HeldOut | None
    description: dict[str, Any]

    @property
    def pool(self) -> PoolStore:
        return PoolStore.open(self.pool_path)

    @classmethod
    def load(cls, root: Path) -> ExperimentData:
        record = json.loads((root / "data.json").read_text())
        val = HeldOut.load(root / "val.npz") if (root / "val.npz").is_file() else None
        return cls(root, root / "pool", tuple(record["class_names"]), tuple(record["size"]), record["channels"],
                   HeldOut.load(root / "test.npz"), val, record)


def prepare_data(root: str | Path, spec: DataSpec, *,
                 on_progress: Callable[[str, int, int], None] | None = None) -> ExperimentData:
    """Build (or reopen) the run's data under ``root``.

    Args:
        root: ``RUN_DIR/data``; reused as is when complete, so a resumed run sees the same pool.
        spec: the dataset, its folder, the frame, the split sizes and the adapter's options.
        on_progress: ``(phase, done, total)`` while items are written.
    """
    root = Path(root)
    dataset, data_dir, size, options = spec.dataset, spec.data_dir, spec.size, dict(spec.options)
    wanted = {"dataset": dataset, "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
              "size": list(size), "options": options}
    if spec.roi_source != DEFAULT_ROI_SOURCE:  # recorded only when set, so older data folders still match
        wanted["roi_source"] = spec.roi_source
    if dataset in GENERATED_KINDS:
        wanted.update(pool_size=spec.pool_size, val_size=spec.val_size, test_size=spec.test_size)
    elif dataset not in NATIVE_SPLITS:
        wanted["test_fraction"] = spec.test_fraction
    if (root / "data.json").is_file():
        record = json.loads((root / "data.json").read_text())
        stored = {key: record.get(key) for key in wanted}
        if stored != json.loads(json.dumps(wanted)):
            raise ValueError(f"{root}: holds the data of another configuration ({stored}), asked for {wanted}; "
                             "use a new run folder")
        return ExperimentData.load(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: an unfinished data folder (no data.json, left by an xal older than the staged "
                         "writes) is in the way; delete it and rerun")
    # Written aside and renamed into place at the end: an interrupted run (Ctrl-C, kill -9, a full
    # disk) leaves no half-written RUN_DIR/data, and the next one starts the folder afresh.
    staging = root.with_name(f".{root.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)  # an earlier attempt's, never anything else: the name is ours
    staging.mkdir(parents=True)
    progress = on_progress or (lambda phase, done, total: None)

    if dataset in NATIVE_SPLITS:
        def split(name: str, n: int):
            return _open_split(dataset, data_dir, size, name, n, options)

        pool_source = split("pool", spec.pool_size)
        channels = int(getattr(pool_source, "channels", 1))
        _write_pool(staging / "pool", pool_source, range(len(pool_source)), progress, roi_source=spec.roi_source)
        test = _held_out(split("test", spec.test_size), "test", progress)
        val_source = split("val", spec.val_size)
        val = _held_out(val_source, "val", progress) if len(val_source) else None
        if not len(test):
            raise ValueError(f"{data_dir}: the dataset has no test split (rows with split=test); the loop "
                             "evaluates every round on it")
        class_names, description = pool_source.classes, pool_source.describe()
    else:
        source = open_dataset(dataset, data_dir, size=size, **options)
        channels = int(getattr(source, "channels", 1))
        test_items: list[Item] = []

        def is_test(item: Item) -> bool:
            group = item.id.split("/")[0]
            digest = hashlib.sha256(group.encode()).digest()
            return int.from_bytes(digest[:8], "little") / 2**64 < spec.test_fraction

        _write_pool(staging / "pool", source, range(len(source)), progress, divert=is_test, diverted=test_items,
                    roi_source=spec.roi_source)
        test = HeldOut.from_items(test_items, size, channels)
        if not len(test):
            raise ValueError(f"{data_dir}: no item fell in the test split (test_fraction {spec.test_fraction}); "
                             "the dataset is too small for a held-out evaluation")
        val = None
        class_names, description = source.classes, source.describe()

    test.save(staging / "test.npz")
    if val is not None:
        val.save(staging / "val.npz")
    record = {**wanted, "class_names": list(class_names), "channels": channels, "source": description,
              "pool_items": len(PoolStore.open(staging / "pool")), "test_items": len(test),
              "val_items": 0 if val is None else len(val)}
    (staging / "data.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if root.exists():
        root.rmdir()  # empty (checked above)
    os.replace(staging, root)  # the commit point: RUN_DIR/data present = data complete
    return ExperimentData.load(root)


def _open_split(dataset: str, data_dir: str | Path | None, size: tuple[int, int], name: str, n: int,
                options: dict[str, Any]) -> Any:
    """One of a dataset's own splits (``NATIVE_SPLITS``), as the run's data is written from it."""
    extra = {"n": n} if dataset in GENERATED_KINDS else {}
    return open_dataset(dataset, data_dir, size=size, split=name, **extra, **options)


def pool_source(record: dict[str, Any]) -> Any:
    """Reopen the dataset the run's pool was written from, from its ``data.json`` record: what
    goes back to an item's file (``source_image``) for the browser annotator."""
    dataset, size, options = record["dataset"], tuple(record["size"]), dict(record.get("options") or {})
    if dataset in NATIVE_SPLITS:
        return _open_split(dataset, record.get("data_dir"), size, "pool", int(record.get("pool_size") or 0), options)
    return open_dataset(dataset, record["data_dir"], size=size, **options)


def _write_pool(path: Path, source: Any, indices: range, progress: Callable[[str, int, int], None], *,
                divert: Callable[[Item], bool] | None = None, diverted: list[Item] | None = None,
                roi_source: str = DEFAULT_ROI_SOURCE) -> None:
    """Write ``source``'s items into a new pool store (corrupt items skipped with a report line); the
    scorer reads the ROI of ``roi_source``, the oracle the expert's (``PoolWriter``)."""
    report = path.parent / "skipped.tsv"
    with PoolWriter(path, size=source.size, channels=int(getattr(source, "channels", 1)), classes=source.classes,
                    roi_format=source.roi_format, source=source.describe(), roi_source=roi_source) as writer, \
            report.open("w", encoding="utf-8") as skipped:
        for skip in getattr(source, "skipped", []):
            skipped.write(f"{skip.path}\t{skip.reason}\n")
        for done, index in enumerate(indices, start=1):
            try:
                item = source[index]
            except ItemError as error:
                skipped.write(f"{error.path}\t{error.reason}\n")
                continue
            if divert is not None and divert(item):
                diverted.append(item)  # type: ignore[union-attr]
            else:
                try:
                    writer.add(item)
                except ValueError as error:
                    skipped.write(f"{item.id}\t{error}\n")
            progress("pool", done, len(indices))


def _held_out(source: Any, name: str, progress: Callable[[str, int, int], None]) -> HeldOut:
    items = []
    for index in range(len(source)):
        try:
            items.append(source[index])
        except ItemError:
            continue
        progress(name, index + 1, len(source))
    return HeldOut.from_items(items, source.size, int(getattr(source, "channels", 1)))
