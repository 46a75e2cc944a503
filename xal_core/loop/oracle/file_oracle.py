"""``FileOracle``: imports the answers a person typed into the labelling sheet. Each line is
checked on its own; bad lines are rejected with a reason (kept in ``rejections`` and written next
to the CSV), good lines are kept, and blank labels are simply not answered yet."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..annotations import Annotation, BoxRoi, utc_now
from .answer_checks import AnswerChecks
from .base import Oracle, OracleAnswer
from .sheet import SHEET_COLUMNS, _lines, _pool_source_ids

if TYPE_CHECKING:
    from xal_core.data import PoolStore

__all__ = ["FileOracle", "Rejection"]


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
    rejected by :class:`AnswerChecks` (the browser annotator's rules too) (unknown ids: not asked for, or not in the pool; unknown labels; malformed rows or ROI
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

    draws_rois = True

    def __init__(self, path: str | os.PathLike[str], class_names: Sequence[str], *, pool_size: int | None = None,
                 source_ids: Mapping[int, str] | None = None, roi_size: tuple[int, int] | None = None,
                 annotator: str | None = None, report_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        table = dict(source_ids) if source_ids is not None else None
        self.checks = AnswerChecks(tuple(class_names), pool_size, roi_size,
                                   None if table is None else (lambda ids: table))
        self.class_names = self.checks.class_names
        self.annotator = annotator or f"file:{self.path.name}"
        self.report_path = Path(report_path) if report_path is not None else \
            self.path.with_name(self.path.name + ".rejected.tsv")
        self.rejections: list[Rejection] = []

    @classmethod
    def for_pool(cls, path: str | os.PathLike[str], pool: PoolStore | str | os.PathLike[str], *,
                 annotator: str | None = None, report_path: str | os.PathLike[str] | None = None) -> FileOracle:
        """A file oracle that checks ids, source ids, classes and the ROI frame against a pool store."""
        from xal_core.data import PoolStore

        store = pool if isinstance(pool, PoolStore) else PoolStore.open(pool)
        oracle = cls(path, store.classes, pool_size=len(store), roi_size=store.size, annotator=annotator,
                     report_path=report_path)
        oracle.checks.source_ids = lambda ids: _pool_source_ids(store, ids)
        return oracle

    @property
    def pool_size(self) -> int | None:
        return self.checks.pool_size

    @property
    def roi_size(self) -> tuple[int, int] | None:
        return self.checks.roi_size

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
            problem = fields if isinstance(fields, str) else self.checks.item_problem(fields["item_id"].strip(), wanted)
            if problem:
                rejections.append(Rejection(number + 1, raw, problem))
                continue
            parsed.append((number + 1, raw, int(fields["item_id"].strip()), fields))
        lookup = self.checks.source_ids
        sources = lookup(sorted({p[2] for p in parsed})) if lookup is not None else None
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
        label = self.checks.label(fields["label"])
        if label is None:
            return self.checks.label_problem(fields["label"])
        mismatch = self.checks.source_problem(item, fields.get("source_id", "").strip(), sources)
        if mismatch:
            return mismatch
        roi_text = fields.get("roi", "").strip()
        roi: BoxRoi | None = None
        if roi_text:
            try:
                roi = BoxRoi.from_json(roi_text)
            except ValueError as error:
                return f"bad roi {roi_text!r}: {error} (expected [[x_min, y_min, x_max, y_max], ...], [] or blank)"
            problem = self.checks.roi_problem(roi)
            if problem:
                return f"bad roi {roi_text!r}: {problem}"
        annotator = fields.get("annotator", "").strip() or self.annotator
        return Annotation(item, label, self.class_names[label], roi, annotator, time)

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
