"""Oracles: who answers "what is this image?" for the items a strategy acquires.

``SimulatedOracle`` reveals the labels (and ROIs) the dataset already holds — the pool store's
``oracle/labels``, which the scorer never reads — so strategies can be compared offline.
``FileOracle`` imports the answers a person typed into a CSV sheet (``write_labelling_sheet``
writes it): each line is checked on its own, bad lines are rejected with a reason (kept in
``rejections`` and written next to the CSV), good lines are kept, and blank labels are simply not
answered yet.

Every oracle answers with an :class:`OracleAnswer`: an :class:`Annotation` for each item it can
answer now, and the ids it cannot (``missing``), in the order they were asked.
"""

from __future__ import annotations

import csv
import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .annotations import AnnotatedRoi, Annotation, BoxRoi, MaskRoi, utc_now

if TYPE_CHECKING:
    from xal_core.data import PoolStore

__all__ = ["Oracle", "OracleAnswer", "SimulatedOracle", "FileOracle", "Rejection", "write_labelling_sheet",
           "SHEET_COLUMNS"]

SHEET_COLUMNS = ("item_id", "source_id", "label", "annotator", "roi")
_INTEGER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class OracleAnswer:
    """``annotations`` for the items answered, ``missing`` the ids not answered yet (asked order)."""

    annotations: list[Annotation] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


class Oracle(ABC):
    """Answers label requests. ``annotator`` names who answers; ``class_names`` the label set."""

    annotator: str
    class_names: tuple[str, ...]

    @abstractmethod
    def annotate(self, item_ids: Sequence[int]) -> OracleAnswer:
        """Labels (and ROIs) for the ids it can answer; every asked id is in exactly one of the two lists."""

    @staticmethod
    def _asked(item_ids: Sequence[int]) -> list[int]:
        asked = []
        for value in item_ids:
            if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 0:
                raise ValueError(f"item ids must be non-negative integers, got {value!r}")
            asked.append(int(value))
        if len(set(asked)) != len(asked):
            twice = sorted({i for i in asked if asked.count(i) > 1})
            raise ValueError(f"item ids asked more than once: {twice}")
        return asked


# ---------------------------------------------------------------------------------------- simulated
class SimulatedOracle(Oracle):
    """Reveals known labels: from a pool store (:meth:`from_pool`) or from a mapping.

    Args:
        labels_by_id: ``item_id → class index``.
        class_names: the classes, indexed by label.
        rois_by_id: optional ``item_id → BoxRoi | MaskRoi | None``; absent ids reveal no ROI (unknown).
        annotator: recorded as the annotations' annotator.

    Asking for an id it does not know is a ``ValueError`` (a simulated oracle can answer every
    item of its dataset, so an unknown id is a bug, never "not answered yet").
    """

    def __init__(self, labels_by_id: Mapping[int, int], class_names: Sequence[str], *,
                 rois_by_id: Mapping[int, AnnotatedRoi] | None = None, annotator: str = "simulated") -> None:
        self.class_names = tuple(class_names)
        self.annotator = annotator
        labels, rois = labels_by_id, rois_by_id or {}

        def reveal(ids: list[int]) -> list[tuple[int, AnnotatedRoi]]:
            unknown = [item for item in ids if item not in labels]
            if unknown:
                raise ValueError(f"simulated oracle: no label for item(s) {unknown[:20]}")
            return [(int(labels[item]), rois.get(item)) for item in ids]

        self._reveal: Callable[[list[int]], list[tuple[int, AnnotatedRoi]]] = reveal

    @classmethod
    def from_pool(cls, pool: PoolStore | str | os.PathLike[str], *, annotator: str = "simulated",
                  reveal_roi: bool = True) -> SimulatedOracle:
        """Reveal the pool's ``oracle/labels`` and its stored ROI of each asked item (read in one go).

        ``reveal_roi=False`` answers labels only (ROI unknown), e.g. to simulate an annotator who
        does not draw.
        """
        from xal_core.data import PoolStore

        store = pool if isinstance(pool, PoolStore) else PoolStore.open(pool)
        oracle = cls({}, store.classes, annotator=annotator)

        def reveal(ids: list[int]) -> list[tuple[int, AnnotatedRoi]]:
            if not ids:
                return []
            labels = store.oracle_labels(ids).tolist()  # IndexError names the range for unknown ids
            rois = _pool_rois(store, ids) if reveal_roi else [None] * len(ids)
            return list(zip(labels, rois, strict=True))

        oracle._reveal = reveal
        return oracle

    def annotate(self, item_ids: Sequence[int]) -> OracleAnswer:
        asked = self._asked(item_ids)
        try:
            revealed = self._reveal(asked)
        except IndexError as error:
            raise ValueError(f"simulated oracle: {error}") from None
        time = utc_now()
        annotations = []
        for item, (label, roi) in zip(asked, revealed, strict=True):
            if not 0 <= label < len(self.class_names):
                raise ValueError(f"simulated oracle: item {item} has label {label}, "
                                 f"outside 0..{len(self.class_names) - 1}")
            annotations.append(Annotation(item, label, self.class_names[label], roi, self.annotator, time))
        return OracleAnswer(annotations, [])


def _pool_rois(pool: PoolStore, ids: Sequence[int]) -> list[AnnotatedRoi]:
    """The stored ROIs of the given rows (``xal-pool/1`` layout, docs/data.md), read in one selection each."""
    import numpy as np
    import zarr

    rows = np.asarray(ids, dtype=np.int64)
    if rows.min() < 0 or rows.max() >= len(pool):
        raise IndexError(f"item index out of range 0..{len(pool) - 1}")
    scoring = pool.path / "scoring"
    read = lambda name: zarr.open_array(str(scoring / name), mode="r").get_orthogonal_selection((rows,))  # noqa: E731
    if pool.roi_format == "boxes":
        counts, boxes = read("roi_counts"), read("roi_boxes")
        return [None if count < 0 else BoxRoi(tuple(tuple(float(v) for v in box) for box in boxes[row, :count]))
                for row, count in enumerate(counts.tolist())]
    known, packed = read("roi_known"), read("roi_packed")
    width = pool.size[1]
    return [MaskRoi.from_packed_row(packed[row], width) if is_known else None
            for row, is_known in enumerate(known.tolist())]


# ---------------------------------------------------------------------------------------- file
@dataclass(frozen=True)
class Rejection:
    """One CSV line the file oracle did not accept: 1-based ``line`` number, its ``text``, ``reason``."""

    line: int
    text: str
    reason: str


class FileOracle(Oracle):
    """Answers from a CSV a person filled in (see :func:`write_labelling_sheet`).

    Columns (header names, any order after ``#`` comment lines; other columns are ignored):
    ``item_id`` and ``label`` required; ``source_id``, ``annotator``, ``roi`` optional.

    * ``label``: a class name (case-insensitive when unambiguous) or its index; blank = not
      answered yet (the item is ``missing``, the line is not rejected).
    * ``roi``: JSON boxes ``[[x_min, y_min, x_max, y_max], ...]`` in pixels, ``[]`` = nothing to
      outline (known empty), blank = not drawn (unknown). When ``roi`` is the last column, an
      unquoted JSON list (its commas split into extra fields) is read back whole.
    * ``annotator``: blank = the oracle's ``annotator``.
    * ``source_id``: when given and source ids are known, it must match the item (catches shifted
      rows and mistyped ids).

    The file is read anew at each :meth:`annotate`, so a person can fill it in between calls. Lines
    rejected (unknown ids: not asked for, or not in the pool; unknown labels; malformed rows or ROI
    JSON; one item answered differently on several lines — all those lines) are listed in
    :attr:`rejections` and written to :attr:`report_path` (TSV: ``line``, ``reason``, ``text``),
    which is removed when a later read has none; valid lines are kept. Asking with the union of
    every arm's pending items in one call keeps the report to real problems.

    Args:
        path: the CSV.
        class_names: the classes, indexed by label.
        pool_size: items ``0 .. pool_size-1`` exist (``None``: not checked).
        source_ids: ``item_id → source id`` to check the ``source_id`` column against.
        roi_size: ``(H, W)`` of the ROI frame, to reject a box entirely outside it.
        annotator: default annotator (``"file:<csv name>"``).
        report_path: where the rejections go (``<csv>.rejected.tsv``).
    """

    def __init__(self, path: str | os.PathLike[str], class_names: Sequence[str], *, pool_size: int | None = None,
                 source_ids: Mapping[int, str] | None = None, roi_size: tuple[int, int] | None = None,
                 annotator: str | None = None, report_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.class_names = tuple(class_names)
        if not self.class_names:
            raise ValueError("class_names: at least one class is needed")
        self.pool_size = pool_size
        self.roi_size = roi_size
        self.annotator = annotator or f"file:{self.path.name}"
        self.report_path = Path(report_path) if report_path is not None else \
            self.path.with_name(self.path.name + ".rejected.tsv")
        self.rejections: list[Rejection] = []
        table = dict(source_ids) if source_ids is not None else None
        self._source_ids: Callable[[list[int]], Mapping[int, str]] | None = \
            None if table is None else (lambda ids: table)

    @classmethod
    def for_pool(cls, path: str | os.PathLike[str], pool: PoolStore | str | os.PathLike[str], *,
                 annotator: str | None = None, report_path: str | os.PathLike[str] | None = None) -> FileOracle:
        """A file oracle that checks ids, source ids, classes and the ROI frame against a pool store."""
        from xal_core.data import PoolStore

        store = pool if isinstance(pool, PoolStore) else PoolStore.open(pool)
        oracle = cls(path, store.classes, pool_size=len(store), roi_size=store.size, annotator=annotator,
                     report_path=report_path)
        oracle._source_ids = lambda ids: _pool_source_ids(store, ids)
        return oracle

    # ------------------------------------------------------------------ reading
    def annotate(self, item_ids: Sequence[int]) -> OracleAnswer:
        asked = self._asked(item_ids)
        wanted = set(asked)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: the labelling sheet does not exist (write it with "
                                    f"write_labelling_sheet, fill it in, then run again)")
        lines = _lines(self.path)
        rejections: list[Rejection] = []
        header, start = self._header(lines)
        parsed: list[tuple[int, str, int, dict[str, str]]] = []  # line number, text, item, fields
        for number in range(start, len(lines)):
            raw = lines[number]
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            fields = self._fields(raw, header)
            problem = fields if isinstance(fields, str) else self._id_problem(fields["item_id"].strip(), wanted)
            if problem:
                rejections.append(Rejection(number + 1, raw, problem))
                continue
            parsed.append((number + 1, raw, int(fields["item_id"].strip()), fields))
        sources = self._source_ids(sorted({p[2] for p in parsed})) if self._source_ids is not None else None
        time = utc_now()
        candidates: dict[int, list[tuple[int, str, Annotation]]] = {}
        for number, raw, item, fields in parsed:
            if not fields.get("label", "").strip():
                continue  # not answered yet
            answer = self._answer(item, fields, sources, time)
            if isinstance(answer, str):
                rejections.append(Rejection(number, raw, answer))
            else:
                candidates.setdefault(item, []).append((number, raw, answer))
        answers: dict[int, Annotation] = {}
        for item, lines_of_item in candidates.items():
            first = lines_of_item[0][2]
            if all(first.same_answer(other) for _, _, other in lines_of_item[1:]):
                answers[item] = first
                continue
            numbers = ", ".join(str(n) for n, _, _ in lines_of_item)
            labels = ", ".join(sorted({a.label_name for _, _, a in lines_of_item}))
            for number, raw, _ in lines_of_item:
                rejections.append(Rejection(number, raw, f"item {item} is answered differently on lines {numbers} "
                                                         f"(labels {labels}, or different ROIs): keep one answer"))
        rejections.sort(key=lambda r: r.line)
        self.rejections = rejections
        self._write_report()
        return OracleAnswer([answers[item] for item in asked if item in answers],
                            [item for item in asked if item not in answers])

    def _id_problem(self, text: str, wanted: set[int]) -> str | None:
        """Why the line's ``item_id`` is rejected, or None."""
        if not _INTEGER.fullmatch(text):
            return f"item_id {text!r} is not a non-negative integer"
        item = int(text)
        if self.pool_size is not None and item >= self.pool_size:
            return f"unknown item id {item}: not in the pool (ids 0..{self.pool_size - 1})"
        if item not in wanted:
            return (f"unknown item id {item}: not among the {len(wanted)} items asked for (already labelled, or "
                    f"never acquired)")
        return None

    def _header(self, lines: list[str]) -> tuple[list[str], int]:
        for number, raw in enumerate(lines):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            names = [name.strip().lower() for name in next(csv.reader([raw]))]
            missing = [name for name in ("item_id", "label") if name not in names]
            if missing:
                raise ValueError(f"{self.path}:{number + 1}: the header {raw!r} lacks column(s) {', '.join(missing)} "
                                 f"(expected {','.join(SHEET_COLUMNS)})")
            twice = sorted({name for name in names if names.count(name) > 1 and name})
            if twice:
                raise ValueError(f"{self.path}:{number + 1}: column(s) {', '.join(twice)} appear twice in the header")
            return names, number + 1
        raise ValueError(f"{self.path}: no header line (expected {','.join(SHEET_COLUMNS)})")

    @staticmethod
    def _fields(raw: str, header: list[str]) -> dict[str, str] | str:
        """The line's fields by column name, or why it is malformed."""
        try:
            fields = next(csv.reader([raw], strict=True))
        except csv.Error as error:
            return f"malformed CSV line ({error})"
        if len(fields) > len(header):
            if header[-1] != "roi":
                return f"{len(fields)} fields, the header has {len(header)}"
            fields = [*fields[: len(header) - 1], ",".join(fields[len(header) - 1:])]
        fields += [""] * (len(header) - len(fields))
        return dict(zip(header, fields, strict=True))

    def _answer(self, item: int, fields: dict[str, str], sources: Mapping[int, str] | None,
                time: str) -> Annotation | str:
        """The line's annotation, or why it is rejected."""
        label = self._label(fields["label"].strip())
        if label is None:
            names = ", ".join(self.class_names)
            return (f"unknown label {fields['label'].strip()!r}: expected one of {names} "
                    f"(or 0..{len(self.class_names) - 1})")
        source = fields.get("source_id", "").strip()
        if source and sources is not None and item in sources and sources[item] != source:
            return f"source_id {source!r} does not match item {item} ({sources[item]!r}): shifted or mistyped row?"
        roi_text = fields.get("roi", "").strip()
        roi: BoxRoi | None = None
        if roi_text:
            try:
                roi = BoxRoi.from_json(roi_text)
            except ValueError as error:
                return f"bad roi {roi_text!r}: {error} (expected [[x_min, y_min, x_max, y_max], ...], [] or blank)"
            outside = self._outside(roi)
            if outside is not None:
                return f"bad roi {roi_text!r}: box {outside} lies entirely outside the {self.roi_size} frame (H, W)"
        annotator = fields.get("annotator", "").strip() or self.annotator
        return Annotation(item, label, self.class_names[label], roi, annotator, time)

    def _label(self, text: str) -> int | None:
        if text in self.class_names:
            return self.class_names.index(text)
        folded = [i for i, name in enumerate(self.class_names) if name.casefold() == text.casefold()]
        if len(folded) == 1:
            return folded[0]
        if _INTEGER.fullmatch(text) and int(text) < len(self.class_names):
            return int(text)
        return None

    def _outside(self, roi: BoxRoi) -> int | None:
        if self.roi_size is None:
            return None
        height, width = self.roi_size
        for number, (x_min, y_min, x_max, y_max) in enumerate(roi.boxes):
            if x_max <= 0 or y_max <= 0 or x_min >= width or y_min >= height:
                return number
        return None

    def _write_report(self) -> None:
        if not self.rejections:
            self.report_path.unlink(missing_ok=True)
            return
        clean = lambda text: text.replace("\t", "\\t")  # noqa: E731
        body = io.StringIO()
        body.write(f"# {len(self.rejections)} line(s) of {self.path} rejected at {utc_now()}; fix them there and "
                   "run again (valid lines were kept)\n")
        body.write("line\treason\ttext\n")
        for rejection in self.rejections:
            body.write(f"{rejection.line}\t{clean(rejection.reason)}\t{clean(rejection.text)}\n")
        temporary = self.report_path.with_name(self.report_path.name + ".tmp")
        temporary.write_text(body.getvalue(), encoding="utf-8")
        temporary.replace(self.report_path)


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


# ---------------------------------------------------------------------------------------- sheet
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

