"""Per-item scores as Parquet: one file per scored range of pool rows, written atomically.

A file is named by the rows it holds, ``items-<first>-<stop>.parquet`` (``first`` inclusive,
``stop`` exclusive, 12 digits), and is written under a temporary name then renamed, so a file is
either whole or absent. A task Ray retries after a worker died rewrites the same name: the retry
replaces, never duplicates. Once a run is over, the driver keeps exactly the files of the ranges it
received (``tidy``), which removes what an abandoned attempt may have left.

Columns: ``id`` int64, ``source_id`` string, ``score`` float64, ``uncertainty``, ``dice``,
``soft_dice``, ``roi_energy``, ``pointing_hit`` float32, ``predicted_class`` int64,
``probabilities`` fixed-size list of float32, ``invalid``, ``excluded`` (the missing-ROI policy) and
``requested_exclusion`` (asked to be left out, e.g. already labelled) bool.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xal_core.acquisition import BatchScores

__all__ = ["file_name", "parse_range", "write_item_scores", "read_item_file", "read_item_scores", "tidy"]

_NAME = re.compile(r"^items-(\d{12})-(\d{12})\.parquet$")
_VECTOR_FIELDS = ("score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "predicted_class",
                  "invalid", "excluded")


def file_name(first: int, stop: int) -> str:
    return f"items-{first:012d}-{stop:012d}.parquet"


def parse_range(path: Path) -> tuple[int, int] | None:
    """``(first, stop)`` of a per-item file, or None for anything else."""
    match = _NAME.match(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def write_item_scores(directory: Path, scores: BatchScores, source_ids: np.ndarray, requested: np.ndarray) -> Path:
    """Write one scored range (``scores.ids`` must be the contiguous rows ``first..stop-1``)."""
    ids = scores.ids.numpy()
    first, stop = int(ids[0]), int(ids[-1]) + 1
    probabilities = scores.probabilities.numpy().astype(np.float32, copy=False)
    columns = {"id": pa.array(ids), "source_id": pa.array(source_ids.astype(str).tolist(), type=pa.string())}
    columns.update({name: pa.array(getattr(scores, name).numpy()) for name in _VECTOR_FIELDS})
    columns["probabilities"] = pa.FixedSizeListArray.from_arrays(pa.array(probabilities.reshape(-1)),
                                                                 probabilities.shape[1])
    columns["requested_exclusion"] = pa.array(np.asarray(requested, dtype=bool))
    target = Path(directory) / file_name(first, stop)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    pq.write_table(pa.table(columns), scratch)
    os.replace(scratch, target)
    return target


def read_item_file(path: Path) -> tuple[BatchScores, np.ndarray, np.ndarray]:
    """One file's scores (every row), source ids and requested-exclusion flags."""
    table = pq.read_table(path)
    width = table.schema.field("probabilities").type.list_size
    probabilities = table["probabilities"].combine_chunks().flatten().to_numpy().reshape(-1, width)
    fields = {name: torch.from_numpy(table[name].to_numpy(zero_copy_only=False).copy()) for name in _VECTOR_FIELDS}
    scores = BatchScores(ids=torch.from_numpy(table["id"].to_numpy().copy()),
                         probabilities=torch.from_numpy(probabilities.copy()), **fields)
    return scores, np.asarray(table["source_id"].to_pylist(), dtype=object), table["requested_exclusion"].to_numpy()


def read_item_scores(directory: Path, *, keep_requested: bool = False) -> Iterator[tuple[BatchScores, np.ndarray]]:
    """Every range's scores (ascending rows) and source ids, without requested exclusions by default."""
    files = sorted((parse_range(path), path) for path in Path(directory).iterdir() if parse_range(path))
    for _, path in files:
        scores, source_ids, requested = read_item_file(path)
        if keep_requested:
            yield scores, source_ids
            continue
        keep = torch.from_numpy(~requested)
        yield BatchScores(**{name: getattr(scores, name)[keep] for name in ("ids", "probabilities", *_VECTOR_FIELDS)}), \
            source_ids[~requested]


def tidy(directory: Path, delivered: set[tuple[int, int]]) -> list[Path]:
    """Remove per-item files whose range the driver never received, and temporary files; return them."""
    removed = []
    for path in Path(directory).iterdir():
        span = parse_range(path)
        stray = span is not None and span not in delivered
        if stray or (path.name.startswith(".items-") and path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
