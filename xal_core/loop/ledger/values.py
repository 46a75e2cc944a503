"""Python values ↔ the ledger's SQL columns: numbers (NaN → NULL), JSON of numbers, annotations'
ROIs, acquisition rows; the one place a value's stored form is decided."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..annotations import Annotation, BoxRoi, MaskRoi
from .records import AcquisitionRecord, AcquisitionRow
from .schema import _SCORE_COLUMNS

__all__ = ["acquisition_values", "annotation_from_row", "describe", "export_acquisition", "roi_columns"]


def _real(value: Any, what: str) -> float | None:
    """A finite or infinite float; NaN and None → None (SQL NULL)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number or None, got {value!r}") from None
    return None if math.isnan(number) else number


def _json_numbers(values: Mapping[str, Any] | Sequence[Any], what: str) -> str:
    """Canonical JSON of numbers (keys sorted; NaN and ±inf → null, so SQLite's JSON functions read it)."""
    finite = lambda v, name: None if (n := _real(v, name)) is None or math.isinf(n) else n  # noqa: E731
    if isinstance(values, Mapping):
        for key in values:
            if not isinstance(key, str):
                raise ValueError(f"{what}: keys must be strings, got {key!r}")
        clean: Any = {key: finite(value, f"{what}[{key!r}]") for key, value in values.items()}
    else:
        clean = [finite(value, f"{what}[{i}]") for i, value in enumerate(values)]
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def acquisition_values(row: AcquisitionRow) -> tuple[Any, ...]:
    if not isinstance(row, AcquisitionRow):
        raise TypeError(f"expected AcquisitionRow, got {type(row).__name__}")
    item_id, rank = int(row.item_id), int(row.rank)
    if item_id < 0 or rank < 0:
        raise ValueError(f"item {row.item_id}: item_id and rank must be non-negative")
    if not isinstance(row.source_id, str):
        raise ValueError(f"item {item_id}: source_id must be a string")
    scores = [_real(getattr(row, name), f"item {item_id}: {name}") for name in _SCORE_COLUMNS]
    predicted = None if row.predicted_class is None else int(row.predicted_class)
    probabilities = None if row.probabilities is None else \
        _json_numbers(list(row.probabilities), f"item {item_id}: probabilities")
    extra = _json_numbers(dict(row.extra), f"item {item_id}: extra")
    return (item_id, row.source_id, rank, *scores, predicted, probabilities, extra)


def describe(annotation: Annotation) -> str:
    roi = "no ROI" if annotation.roi is None else (
        f"boxes {annotation.roi.to_json()}" if isinstance(annotation.roi, BoxRoi) else
        f"a {annotation.roi.height}×{annotation.roi.width} mask")
    return (f"label {annotation.label} ({annotation.label_name!r}), {roi}, by {annotation.annotator!r} "
            f"at {annotation.time}")


def roi_columns(annotation: Annotation) -> tuple[Any, ...]:
    roi = annotation.roi
    if roi is None:
        return (None, None, None, None, None)
    if isinstance(roi, BoxRoi):
        return ("boxes", roi.to_json(), None, None, None)
    return ("mask", None, roi.packed, roi.height, roi.width)


def annotation_from_row(row: Sequence[Any]) -> Annotation:
    item_id, label, label_name, kind, boxes, mask, height, width, annotator, time = row
    roi: BoxRoi | MaskRoi | None = None
    if kind == "boxes":
        roi = BoxRoi.from_json(boxes)
    elif kind == "mask":
        roi = MaskRoi(bytes(mask), int(height), int(width))
    return Annotation(int(item_id), int(label), label_name, roi, annotator, time)


def export_acquisition(record: AcquisitionRecord) -> dict[str, Any]:
    row = record.row
    clean = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v  # noqa: E731
    return {
        "round": record.round, "item_id": row.item_id, "source_id": row.source_id, "rank": row.rank,
        **{name: clean(getattr(row, name)) for name in _SCORE_COLUMNS},
        "predicted_class": row.predicted_class,
        "probabilities": None if row.probabilities is None else [clean(p) for p in row.probabilities],
        "extra": {k: clean(v) for k, v in sorted(row.extra.items())},
        "model_version": record.model_version,
    }
