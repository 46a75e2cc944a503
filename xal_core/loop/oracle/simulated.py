"""``SimulatedOracle``: reveals the labels (and ROIs) the dataset already holds — the pool store's
``oracle/labels``, which the scorer never reads — so strategies can be compared offline."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..annotations import AnnotatedRoi, Annotation, BoxRoi, MaskRoi, utc_now
from .base import Oracle, OracleAnswer

if TYPE_CHECKING:
    from xal_core.data import PoolStore

__all__ = ["SimulatedOracle"]


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
    """The expert's ROIs of the given rows, as the pool keeps them for the oracle (``oracle/``, never
    what the scorer reads: docs/data.md, "ROI sources")."""
    return [None if roi is None else MaskRoi.from_mask(roi) if roi.dtype == bool
            else BoxRoi(tuple(tuple(float(v) for v in box) for box in roi))
            for roi in pool.oracle_rois(ids)]
