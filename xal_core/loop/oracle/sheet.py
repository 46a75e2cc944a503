"""The labelling sheet's format (a CSV a person fills in) and the helpers both its writer and its
reader use: the columns, what counts as an id, reading lines, the pool's source ids."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xal_core.data import PoolStore

__all__ = ["SHEET_COLUMNS"]

SHEET_COLUMNS = ("item_id", "source_id", "label", "annotator", "roi")
_INTEGER = re.compile(r"[0-9]+")


def _lines(path: Path) -> list[str]:
    """The file's lines as an editor numbers them (only CR/LF end a line; a BOM is dropped)."""
    text = path.read_text(encoding="utf-8-sig")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _pool_source_ids(pool: PoolStore, ids: Sequence[int]) -> dict[int, str]:
    import numpy as np
    import zarr

    if not ids:
        return {}
    rows = np.asarray(ids, dtype=np.int64)
    raw = zarr.open_array(str(pool.path / "scoring" / "ids"), mode="r").get_orthogonal_selection((rows,))
    return {int(item): bytes(row).rstrip(b"\0").decode("utf-8") for item, row in zip(rows.tolist(), raw, strict=True)}
