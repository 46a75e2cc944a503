"""``write_labelling_sheet``: the CSV a person fills in for the acquired items (kept answers and
earlier lines are preserved when it is written again)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .sheet import _INTEGER, SHEET_COLUMNS, _lines

if TYPE_CHECKING:
    pass

__all__ = ["write_labelling_sheet"]


def write_labelling_sheet(path: str | os.PathLike[str], item_ids: Sequence[int],
                          source_ids: Sequence[str] | Mapping[int, str], class_names: Sequence[str]) -> list[int]:
    """Write the CSV a person fills in, or add the rows it lacks; never rewrite a line already there.

    The sheet starts with ``#`` lines on what to type, then the header ``item_id,source_id,label,
    annotator,roi`` and one row per item with ``label``, ``annotator`` and ``roi`` blank. When the
    file exists (a half-filled sheet after a restart), rows are appended only for ids it does not
    list yet, so nothing a person typed is lost.

    Args:
        path: the sheet; its folder must exist.
        item_ids: the items to label, in the order to show them.
        source_ids: their dataset ids (aligned with ``item_ids``, or a mapping).
        class_names: the allowed labels.

    Returns:
        The ids whose rows were written now.
    """
    path = Path(path)
    ids = [int(item) for item in item_ids]
    names = dict(source_ids) if isinstance(source_ids, Mapping) else dict(zip(ids, source_ids, strict=True))
    if path.exists():
        listed = _sheet_ids(path)
        new = [item for item in ids if item not in listed]
        if new:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                ends_open = handle.tell() > 0 and (handle.seek(-1, os.SEEK_END), handle.read(1))[1] not in b"\r\n"
            with open(path, "a", encoding="utf-8", newline="") as handle:
                if ends_open:
                    handle.write("\n")
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerows([item, names[item], "", "", ""] for item in new)
                handle.flush()
                os.fsync(handle.fileno())
        return new
    classes = list(class_names)
    body = io.StringIO()
    body.write(f"# xal labelling sheet. Fill in `label` on each row with one of: {', '.join(classes)} "
               f"(or its number 0-{len(classes) - 1}).\n")
    body.write('# roi (optional): boxes in pixels as JSON, e.g. "[[x_min, y_min, x_max, y_max]]"; [] = nothing to '
               "outline; blank = not drawn.\n")
    body.write("# annotator (optional): your name or initials. Leave label blank for rows not done yet; lines "
               "starting with # are ignored.\n")
    writer = csv.writer(body, lineterminator="\n")
    writer.writerow(SHEET_COLUMNS)
    writer.writerows([item, names[item], "", "", ""] for item in ids)
    temporary = path.with_name(f".{path.name}.writing-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(body.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)  # no clobber: a sheet that appeared meanwhile is never overwritten
    except FileExistsError:
        temporary.unlink()
        return write_labelling_sheet(path, ids, names, class_names)
    except OSError:  # a file system without hard links
        if path.exists():
            temporary.unlink()
            return write_labelling_sheet(path, ids, names, class_names)
        os.replace(temporary, path)
        return ids
    temporary.unlink()
    return ids


def _sheet_ids(path: Path) -> set[int]:
    """The item ids an existing sheet lists (first column of its data lines)."""
    listed: set[int] = set()
    header_seen = False
    for raw in _lines(path):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([raw]))
        if not header_seen:
            header = [name.strip().lower() for name in fields]
            if "item_id" not in header:
                raise ValueError(f"{path}: exists and is not a labelling sheet (no item_id column); not touching it")
            column = header.index("item_id")
            header_seen = True
            continue
        value = fields[column].strip() if column < len(fields) else ""
        if _INTEGER.fullmatch(value):
            listed.add(int(value))
    return listed
