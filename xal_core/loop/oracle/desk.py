"""``AnnotationDesk``: the acquired batch a person is answering, and the one door answers go through.

A browser page (``xal annotate``, ``xal run --oracle web``) shows the batch and records each answer
the moment it is given, so the desk sits on the run's ledger itself rather than on a file:

* **the batch** is every round, of every arm, that still has an item without an answer: all its
  items in acquisition order (arm, round, rank), answered ones included so progress reads
  "12 of 40 done"; an item several arms acquired appears once, under the first arm;
* **an answer** is checked by :class:`AnswerChecks` (the file oracle's rules), then written in one
  ledger transaction under the first arm that has the item pending. The check and the write hold
  one lock, so of two tabs answering the same item the second is refused with
  :class:`NotPending`, whatever it answered; nothing is ever overwritten;
* **waiting**: :meth:`wait_for` blocks the loop until the items it asked for are answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..annotations import AnnotatedRoi, Annotation, BoxRoi, MaskRoi, utc_now
from ..ledger import AcquisitionRecord, Arm, Ledger
from .answer_checks import AnswerChecks
from .sheet import _pool_source_ids

if TYPE_CHECKING:
    from xal_core.data import PoolStore

__all__ = ["AnnotationDesk", "BatchItem", "InvalidAnswer", "NotPending"]


class InvalidAnswer(ValueError):
    """The answer itself is wrong (unknown class, ROI outside the frame, malformed mask)."""


class NotPending(LookupError):
    """The item is not waiting for an answer (answered already, e.g. in another tab, or never acquired)."""


@dataclass(frozen=True)
class BatchItem:
    """One item of the open batch: why it was acquired (``record``) and its answer if given."""

    record: AcquisitionRecord
    answer: Annotation | None

    @property
    def item_id(self) -> int:
        return self.record.row.item_id


class AnnotationDesk:
    """The open batch of a run's ledger and the checked, recorded answers to it.

    Args:
        ledger: the run's ledger, opened for writing (it may be shared with the running loop).
        pool: the run's pool store: classes, item count, ROI frame, source ids.
    """

    def __init__(self, ledger: Ledger, pool: PoolStore) -> None:
        self.ledger = ledger
        self.pool = pool
        self.checks = AnswerChecks(tuple(pool.classes), len(pool), tuple(pool.size),
                                   lambda ids: _pool_source_ids(pool, ids))
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.checks.class_names

    # ------------------------------------------------------------------ the batch
    def batch(self) -> list[BatchItem]:
        """The open rounds' items, in acquisition order; empty when nothing is pending."""
        return [BatchItem(record, None if pending else self.ledger.annotation(record.row.item_id))
                for record, pending in self._open_records()]

    def batch_item(self, item_id: int) -> BatchItem | None:
        """The item if it belongs to the open batch (what may be shown), else None; its answer is
        not looked up (the page's images and tiles need only the acquisition)."""
        return next((BatchItem(record, None) for record, _ in self._open_records()
                     if record.row.item_id == item_id), None)

    def _open_records(self) -> list[tuple[AcquisitionRecord, bool]]:
        """``(acquisition, still pending)`` of every item of the open rounds, each item once (first arm)."""
        seen: dict[int, tuple[AcquisitionRecord, bool]] = {}
        for arm in self.ledger.arms():
            pending = set(self.ledger.pending(arm))
            if not pending:
                continue
            records = self.ledger.acquisitions(arm)
            open_rounds = {record.round for record in records if record.row.item_id in pending}
            for record in records:
                item = record.row.item_id
                if record.round in open_rounds and item not in seen:
                    seen[item] = (record, item in pending)
        return list(seen.values())

    # ------------------------------------------------------------------ answering
    def answer(self, item_id: int, label: str | int, roi: AnnotatedRoi, annotator: str) -> Annotation:
        """Check and record one answer; returns it as stored.

        Raises:
            InvalidAnswer: unknown label, ROI the frame cannot hold, empty annotator.
            NotPending: the item is answered already or not acquired by this run.
        """
        label_index = self.checks.label(str(label))
        if label_index is None:
            raise InvalidAnswer(self.checks.label_problem(str(label)))
        problem = self.checks.roi_problem(roi)
        if problem:
            raise InvalidAnswer(f"roi: {problem}")
        annotator = annotator.strip()
        if not annotator or len(annotator) > 200:
            raise InvalidAnswer("annotator: give a name of 1 to 200 characters")
        with self._lock:
            arm = self._arm_waiting_for(item_id)
            annotation = Annotation(item_id, label_index, self.class_names[label_index], roi, annotator, utc_now())
            self.ledger.record_annotations(arm, [annotation])
            self._answered.notify_all()
        return annotation

    def _arm_waiting_for(self, item_id: int) -> Arm:
        for arm in self.ledger.arms():
            if item_id in self.ledger.pending(arm):
                return arm
        given = self.ledger.annotation(item_id)
        if given is not None:
            raise NotPending(f"item {item_id} was answered already ({given.label_name!r} by {given.annotator} at "
                             f"{given.time}), perhaps in another tab; an answer is never overwritten")
        raise NotPending(f"item {item_id} is not waiting for an answer: this run did not acquire it")

    def roi_from_parts(self, boxes: Sequence[Sequence[float]] | None, mask: bytes | None,
                       no_finding: bool) -> AnnotatedRoi:
        """The ROI of a drawn answer: boxes, a bit-packed brush mask (boxes are painted into it, by
        the contract's pixel-centre rule), ``[]`` for "no finding", ``None`` when nothing was drawn."""
        if no_finding:
            if boxes or mask:
                raise InvalidAnswer("roi: 'no finding' with a drawn ROI; clear the drawing or the mark")
            return BoxRoi(())
        try:
            box_roi = BoxRoi(tuple(tuple(box) for box in boxes)) if boxes else None  # type: ignore[misc]
        except ValueError as error:
            raise InvalidAnswer(f"roi: {error}") from None
        if mask is None:
            return box_roi
        height, width = self.checks.roi_size  # type: ignore[misc]
        try:
            brushed = MaskRoi(mask, height, width)
        except ValueError as error:
            raise InvalidAnswer(f"roi: {error}") from None
        if box_roi is None:
            return brushed
        problem = self.checks.roi_problem(box_roi)
        if problem:
            raise InvalidAnswer(f"roi: {problem}")
        return MaskRoi.from_mask(brushed.to_mask() | box_roi.to_mask((height, width)))

    # ------------------------------------------------------------------ waiting
    def wait_for(self, item_ids: Sequence[int], *, timeout: float | None = None,
                 poll: float = 1.0) -> list[Annotation] | None:
        """Block until every item of ``item_ids`` has an answer; the answers in that order, or None
        at ``timeout``. Re-reads the ledger at least every ``poll`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            found = [self.ledger.annotation(item) for item in item_ids]
            if all(answer is not None for answer in found):
                return found  # type: ignore[return-value]
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            if left <= 0:
                return None
            with self._lock:
                self._answered.wait(left)
