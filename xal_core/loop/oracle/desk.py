"""``AnnotationDesk``: the acquired batch a person is answering, and the one door answers go through.

A browser page (``xal annotate``, ``xal run --oracle web``) shows the batch and records each answer
the moment it is given, so the desk sits on the run's ledger itself rather than on a file:

* **the batch** is every round, of every arm, that still has an item without an answer: all its
  items in acquisition order (arm, round, rank), answered ones included so progress reads
  "12 of 40 done"; an item several arms acquired appears once, under the first arm;
* **an answer** is checked by :class:`AnswerChecks` (the file oracle's rules), then written in one
  ledger transaction under the first arm that has the item pending. The check and the write hold
  one lock, so of two tabs answering the same item the second is refused with
  :class:`NotPending`, whatever it answered. The class is an index (an ``int``) or a name (a
  ``str``), never a string read as both;
* **a revision** corrects an answer of the open batch before the run trains on it: allowed while,
  for every arm that acquired the item, the round it was acquired in still has a pending item (so
  the loop is still waiting for that batch). The ledger keeps the replaced answer
  (``Ledger.revise_annotation``); the caller names the revision it saw, so a revision made
  meanwhile in another tab is refused (:class:`NotPending`), not overwritten;
* **waiting**: :meth:`wait_for` blocks the loop until the items it asked for are answered, and
  reads them under the desk's lock, so it never returns an answer a revision replaced meanwhile.
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
    """One item of the open batch: why it was acquired (``record``), its answer if given, the
    answer's revision (0 = as first given) and whether it may still be revised."""

    record: AcquisitionRecord
    answer: Annotation | None
    revision: int = 0
    revisable: bool = False

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

    @property
    def roi_format(self) -> str:
        """The kind of ROI the dataset's experts draw (``"mask"`` or ``"boxes"``): the pool's oracle ROIs."""
        return getattr(self.pool, "oracle_roi_format", None) or self.pool.roi_format

    # ------------------------------------------------------------------ the batch
    def batch(self) -> list[BatchItem]:
        """The open rounds' items, in acquisition order; empty when nothing is pending."""
        records = self._open_records()
        answered = [record.row.item_id for record, pending in records if not pending]
        revisions = self.ledger.revision_counts(answered)
        revisable = self._revisable(answered)
        return [BatchItem(record, None, 0, False) if pending else
                BatchItem(record, self.ledger.annotation(record.row.item_id),
                          revisions.get(record.row.item_id, 0), record.row.item_id in revisable)
                for record, pending in records]

    def last_batch(self) -> tuple[int, list[AcquisitionRecord]] | None:
        """When nothing is pending: the highest round any arm acquired and its acquisitions (the
        batch the loop now trains on), or None when nothing was ever acquired."""
        best: tuple[int, list[AcquisitionRecord]] | None = None
        for arm in self.ledger.arms():
            records = self.ledger.acquisitions(arm)
            if not records:
                continue
            last = max(record.round for record in records)
            if best is None or last > best[0]:
                best = (last, [])
            if last == best[0]:
                best[1].extend(record for record in records if record.round == last)
        return best

    def round_durations(self) -> list[float]:
        """Seconds from the last answer of a round's batch to the next round's first acquisition, per
        arm and round where both are recorded (what training, evaluating and scoring took), in
        round order: the page's "about M minutes" estimate. (Answers imported from a sheet carry
        the sheet's times, so a pause between them and the next run counts too.)"""
        from datetime import datetime

        durations = []
        for arm in self.ledger.arms():
            records = self.ledger.acquisitions(arm)
            rounds = sorted({record.round for record in records})
            for round_, following in zip(rounds, rounds[1:], strict=False):
                answers = [self.ledger.annotation(record.row.item_id) for record in records if record.round == round_]
                if not answers or any(answer is None for answer in answers):
                    continue
                start = max(datetime.fromisoformat(answer.time) for answer in answers)  # type: ignore[union-attr]
                end = min(datetime.fromisoformat(record.acquired_at) for record in records if record.round == following)
                if end >= start:
                    durations.append((end - start).total_seconds())
        return durations

    def batch_item(self, item_id: int) -> BatchItem | None:
        """The item if it belongs to the open batch (what may be shown), else None; its answer is
        not looked up (the page's images and tiles need only the acquisition)."""
        return next((BatchItem(record, None) for record, _ in self._open_records()
                     if record.row.item_id == item_id), None)

    def current_answer(self, item_id: int) -> tuple[Annotation, int, bool] | None:
        """``(answer, revision, revisable)`` of an answered item of the open batch, else None."""
        if self.batch_item(item_id) is None:
            return None
        answer = self.ledger.annotation(item_id)
        if answer is None:
            return None
        return answer, self.ledger.revision_counts([item_id]).get(item_id, 0), bool(self._revisable([item_id]))

    def _revisable(self, items: Sequence[int]) -> set[int]:
        """Those of ``items`` whose every acquisition lies in a round that still has a pending item."""
        wanted = set(items)
        if not wanted:
            return set()
        open_at: dict[int, bool] = {}
        for arm in self.ledger.arms():
            pending = set(self.ledger.pending(arm))
            records = self.ledger.acquisitions(arm)
            open_rounds = {record.round for record in records if record.row.item_id in pending}
            for record in records:
                item = record.row.item_id
                if item in wanted:
                    open_at[item] = open_at.get(item, True) and record.round in open_rounds
        return {item for item, still_open in open_at.items() if still_open}

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
    def answer(self, item_id: int, label: str | int, roi: AnnotatedRoi, annotator: str, *,
               revises: int | None = None) -> Annotation:
        """Check and record one answer (or, with ``revises``, a correction of one); returns it as stored.

        Args:
            label: the class's index (an ``int``) or its name (a ``str``: exact, or an unambiguous
                case-folded match); a ``str`` is never read as an index.
            revises: ``None`` for a first answer (the item must be pending); else the revision of
                the answer being corrected, as the caller saw it (0 = the first answer).

        Raises:
            InvalidAnswer: unknown label, ROI the frame cannot hold, empty annotator.
            NotPending: the item is answered already (or, revising: not answered, revised meanwhile,
                or its batch is no longer open) or not acquired by this run.
        """
        if isinstance(label, str):
            label_index = self.checks.label_from_name(label)
            if label_index is None:
                raise InvalidAnswer(f"label_name: {self.checks.label_problem(label)}")
        else:
            label_index = self.checks.label_from_index(label)
            if label_index is None:
                raise InvalidAnswer(f"label_index: {label!r} is not a class index (0..{len(self.class_names) - 1} "
                                    f"for {', '.join(self.class_names)})")
        problem = self.checks.roi_problem(roi)
        if problem:
            raise InvalidAnswer(f"roi: {problem}")
        annotator = annotator.strip()
        if not annotator or len(annotator) > 200:
            raise InvalidAnswer("annotator: give a name of 1 to 200 characters")
        annotation = Annotation(item_id, label_index, self.class_names[label_index], roi, annotator, utc_now())
        with self._lock:
            if revises is None:
                arm = self._arm_waiting_for(item_id)
                self.ledger.record_annotations(arm, [annotation])
            else:
                self._revise(annotation, revises)
            self._answered.notify_all()
        return annotation

    def _revise(self, annotation: Annotation, revises: int) -> None:
        item_id = annotation.item_id
        given = self.ledger.annotation(item_id)
        if given is None:
            raise NotPending(f"item {item_id} has no answer to revise (it is pending, or this run did not acquire it)")
        if item_id not in self._revisable([item_id]):
            raise NotPending(f"item {item_id}'s batch is complete and the run has taken its answers to train on: "
                             f"an answer is revised only while its batch is open")
        revision = self.ledger.revision_counts([item_id]).get(item_id, 0)
        if revision != revises:
            raise NotPending(f"item {item_id}'s answer was revised meanwhile (now {given.label_name!r} by "
                             f"{given.annotator} at {given.time}, revision {revision}), perhaps in another tab; "
                             "look at it again before correcting it")
        self.ledger.revise_annotation(annotation, revises=revises)

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
            raise InvalidAnswer(f"boxes: {error}") from None
        if box_roi is not None and (problem := self.checks.roi_problem(box_roi)):
            raise InvalidAnswer(f"boxes: {problem}")
        if mask is None:
            return box_roi
        if self.roi_format != "mask":
            raise InvalidAnswer(f"mask: this pool's expert ROIs are {self.roi_format}: draw boxes, not a brush mask")
        height, width = self.checks.roi_size  # type: ignore[misc]
        try:
            brushed = MaskRoi(mask, height, width)
        except ValueError as error:
            raise InvalidAnswer(f"mask: {error}") from None
        if not brushed.to_mask().any() and box_roi is None:
            raise InvalidAnswer("mask: nothing is painted; send no mask (ROI not drawn) or no_finding (known empty)")
        if box_roi is None:
            return brushed
        return MaskRoi.from_mask(brushed.to_mask() | box_roi.to_mask((height, width)))

    # ------------------------------------------------------------------ waiting
    def wait_for(self, item_ids: Sequence[int], *, timeout: float | None = None,
                 poll: float = 1.0) -> list[Annotation] | None:
        """Block until every item of ``item_ids`` has an answer; the answers in that order, or None
        at ``timeout``. Re-reads the ledger at least every ``poll`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:  # answers and revisions are written under it: one consistent reading
                found = [self.ledger.annotation(item) for item in item_ids]
                if all(answer is not None for answer in found):
                    return found  # type: ignore[return-value]
                left = poll if deadline is None else min(poll, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._answered.wait(left)
