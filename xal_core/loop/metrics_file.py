"""``metrics.csv``: one row per strategy, seed and round, appended as rounds finish and read back
by ``xal report``.

The file has the ``METRICS_COLUMNS`` (the arm, the round, its label count, then ``RoundMetrics``' fields)
and, only for runs trained with non-default options (ROI loss or swap, cosine schedule, warm start),
a last ``training`` column naming them (``TrainRecipe.label``, e.g. ``swap+cosine``). Files written
before it, and runs at the default training, keep the old header; reading gives such rows no
``training`` key. The report draws ``report.stats.series_name(strategy, training)`` (``dual+swap``)
as one line, so two runs of one strategy trained differently stay apart when merged.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .metrics import METRIC_NAMES

__all__ = ["ANNOTATION_COST_FILE", "KEY_COLUMNS", "METRICS_COLUMNS", "ROIS_DRAWN", "TRAINING_COLUMN", "VAL_METRICS_FILE",
           "VAL_PREFIX", "append_metrics_csv", "read_metrics_csv", "write_annotation_cost"]

#: what identifies a row: the arm, the round and how many labels it had
KEY_COLUMNS = ("strategy", "seed", "round", "labels")
METRICS_COLUMNS = (*KEY_COLUMNS, *METRIC_NAMES)
TRAINING_COLUMN = "training"  # optional last column: the non-default training options (TrainRecipe.label)
#: The same rows evaluated on the validation split, in a file of the same layout beside metrics.csv;
#: in the ledger each round's validation metrics carry this prefix.
VAL_METRICS_FILE = "metrics_val.csv"
VAL_PREFIX = "val_"
#: The ROI cost of a round, recorded in the ledger beside its metrics and written to
#: ``annotation_cost.csv``: how many of the labels so far came with a drawn ROI.
ROIS_DRAWN = "rois_drawn"
ANNOTATION_COST_FILE = "annotation_cost.csv"
_KEY_TYPES = {"strategy": str, "seed": int, "round": int, "labels": int}


def append_metrics_csv(path: str | Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """Append rows (``RoundMetrics.to_row`` dicts) to ``metrics.csv``, writing the header first if new.

    Each row must hold exactly the ``METRICS_COLUMNS``, plus optionally ``training``; a new file
    gets the ``training`` column only when some row names a training. An existing file with another
    header is an error, never silently mixed (rows with a training cannot go into a file without the
    column; rows without one go into a file with it as ``""``). Floats are written with full
    precision, NaN as ``nan``.
    """
    path = Path(path)
    rows = list(rows)
    trained = any(row.get(TRAINING_COLUMN) for row in rows)
    if path.exists() and path.stat().st_size > 0:
        with path.open(newline="", encoding="utf-8") as handle:
            header = tuple(next(csv.reader(handle), []))
        if header not in (METRICS_COLUMNS, (*METRICS_COLUMNS, TRAINING_COLUMN)):
            raise ValueError(f"{path}: header {list(header)} is not the metrics.csv header {list(METRICS_COLUMNS)}")
        with_training = header[-1] == TRAINING_COLUMN
        if trained and not with_training:
            raise ValueError(f"{path}: has no {TRAINING_COLUMN} column; rows of a run trained otherwise "
                             "(ROI training, schedule, warm start) belong in another file")
        new = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with_training, new = trained, True
    lines = [_format_row(row, index, with_training) for index, row in enumerate(rows)]
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow((*METRICS_COLUMNS, TRAINING_COLUMN) if with_training else METRICS_COLUMNS)
        writer.writerows(lines)
    return path


def read_metrics_csv(path: str | Path) -> list[dict[str, object]]:
    """The rows of ``metrics.csv`` with typed values: ``strategy`` str, ``seed/round/labels`` int, metrics float."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = tuple(reader.fieldnames or ())
        if header not in (METRICS_COLUMNS, (*METRICS_COLUMNS, TRAINING_COLUMN)):
            raise ValueError(f"{path}: header {reader.fieldnames} is not the metrics.csv header "
                             f"{list(METRICS_COLUMNS)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                row = {name: _KEY_TYPES.get(name, float)(raw[name]) for name in METRICS_COLUMNS}
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}, line {line}: {error}") from None
            if header[-1] == TRAINING_COLUMN:
                row[TRAINING_COLUMN] = raw[TRAINING_COLUMN] or ""
            rows.append(row)
    return rows


def _format_row(row: Mapping[str, object], index: int, with_training: bool = False) -> list[str]:
    if set(row) - {TRAINING_COLUMN} != set(METRICS_COLUMNS):
        missing = [c for c in METRICS_COLUMNS if c not in row]
        extra = sorted(set(row) - set(METRICS_COLUMNS) - {TRAINING_COLUMN})
        raise ValueError(f"rows[{index}]: missing columns {missing}, unknown columns {extra}")
    training = row.get(TRAINING_COLUMN) or ""
    if not isinstance(training, str) or any(c in training for c in "/\\\0,\n\r"):
        raise ValueError(f"rows[{index}].{TRAINING_COLUMN}: expected a short name without / \\ , or newlines, "
                         f"got {training!r}")
    out = []
    for name in METRICS_COLUMNS:
        value = row[name]
        if name == "strategy":
            if not isinstance(value, str) or not value:
                raise ValueError(f"rows[{index}].strategy: expected a non-empty string, got {value!r}")
            out.append(value)
        elif name in _KEY_TYPES:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"rows[{index}].{name}: expected an integer, got {value!r}")
            out.append(str(int(value)))
        else:
            out.append(repr(float(value)))
    if with_training:
        out.append(training)
    return out


def write_annotation_cost(path: str | Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """``annotation_cost.csv``: per arm and round, the labels and how many of them came with a drawn
    ROI (``KEY_COLUMNS`` + ``rois_drawn``), written whole to a scratch file and renamed into place."""
    path = Path(path)
    scratch = path.with_name(path.name + ".tmp")
    with scratch.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow((*KEY_COLUMNS, ROIS_DRAWN))
        for row in rows:
            writer.writerow([row[name] for name in KEY_COLUMNS] + [int(row[ROIS_DRAWN])])
    scratch.replace(path)
    return path
