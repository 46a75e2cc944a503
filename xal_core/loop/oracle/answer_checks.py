"""``AnswerChecks``: the one place that decides whether a person's answer can be recorded.

The file oracle (a CSV line) and the browser annotator (a click) accept exactly the same answers,
so the rules live here and both call them: an item id must exist and be asked for, a label must
name a class (exact name, unambiguous case-folded name, or index; a sheet's text is read as a name
first), a box must enclose an area and may stick out of the ROI frame by at most the frame's own
size but not lie entirely outside it, a mask must have the frame's size. Each check returns the reason in words or ``None``; callers decide
how to report it (a rejected CSV line, an HTTP 4xx). The browser's wire names the class one way
only (``label_index`` or ``label_name``: :meth:`AnswerChecks.label_from_index`,
:meth:`AnswerChecks.label_from_name`), so nothing it sends is read two ways.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..annotations import AnnotatedRoi, BoxRoi, MaskRoi
from .sheet import _INTEGER

__all__ = ["AnswerChecks"]


@dataclass
class AnswerChecks:
    """What a recordable answer looks like for one pool.

    Attributes:
        class_names: the classes, indexed by label.
        pool_size: items ``0 .. pool_size-1`` exist (``None``: not checked).
        roi_size: ``(H, W)`` of the ROI frame (``None``: not checked).
        source_ids: ``ids → {item_id: source id}`` for the items asked (``None``: not checked).
    """

    class_names: tuple[str, ...]
    pool_size: int | None = None
    roi_size: tuple[int, int] | None = None
    source_ids: Callable[[list[int]], Mapping[int, str]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        if not self.class_names:
            raise ValueError("class_names: at least one class is needed")

    # ------------------------------------------------------------------ items
    def item_problem(self, text: str, asked: Sequence[int] | set[int]) -> str | None:
        """Why the item id ``text`` cannot be answered now (not an id, not in the pool, not asked), or None."""
        if not _INTEGER.fullmatch(text):
            return f"item_id {text!r} is not a non-negative integer"
        item = int(text)
        if self.pool_size is not None and item >= self.pool_size:
            return f"unknown item id {item}: not in the pool (ids 0..{self.pool_size - 1})"
        if item not in asked:
            return (f"unknown item id {item}: not among the {len(asked)} items asked for (already labelled, or "
                    f"never acquired)")
        return None

    def source_problem(self, item: int, source: str, sources: Mapping[int, str] | None) -> str | None:
        """Why a stated ``source`` id does not fit ``item`` (a shifted or mistyped row), or None."""
        if source and sources is not None and item in sources and sources[item] != source:
            return f"source_id {source!r} does not match item {item} ({sources[item]!r}): shifted or mistyped row?"
        return None

    # ------------------------------------------------------------------ labels
    def label(self, text: str) -> int | None:
        """The class index ``text`` names (name, unambiguous case-folded name, or index — a name
        first: in a sheet, ``2`` with classes ``1, 2, 3`` is the class named ``2``), or None."""
        text = text.strip()
        by_name = self.label_from_name(text)
        if by_name is not None:
            return by_name
        if _INTEGER.fullmatch(text) and len(text) <= 9 and int(text) < len(self.class_names):
            return int(text)
        return None

    def label_from_name(self, name: str) -> int | None:
        """The class ``name`` names (exact, or an unambiguous case-folded match), or None; never an index."""
        if name in self.class_names:
            return self.class_names.index(name)
        folded = [i for i, known in enumerate(self.class_names) if known.casefold() == name.casefold()]
        return folded[0] if len(folded) == 1 else None

    def label_from_index(self, index: object) -> int | None:
        """``index`` if it is an integer (not a bool, not text) of a class, else None."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.class_names):
            return None
        return index

    def label_problem(self, text: str) -> str:
        """The reason an unknown label is refused (call when :meth:`label` gave None)."""
        text = text.strip()
        shown = text if len(text) <= 40 else text[:37] + "..."
        return (f"unknown label {shown!r}: expected one of {', '.join(self.class_names)} "
                f"(or 0..{len(self.class_names) - 1})")

    # ------------------------------------------------------------------ ROIs
    def roi_problem(self, roi: AnnotatedRoi) -> str | None:
        """Why an ROI cannot be recorded for this pool's frame, or None.

        A box partly outside the frame is kept (the pixel-centre rule clips it); one entirely
        outside would be a drawn ROI that covers nothing, almost surely a typo or a wrong frame.
        """
        if roi is None or self.roi_size is None:
            return None
        height, width = self.roi_size
        if isinstance(roi, MaskRoi):
            if (roi.height, roi.width) != (height, width):
                return f"mask of {roi.height}×{roi.width} pixels, the ROI frame is {height}×{width}"
            return None
        assert isinstance(roi, BoxRoi)
        for number, (x_min, y_min, x_max, y_max) in enumerate(roi.boxes):
            if x_max <= 0 or y_max <= 0 or x_min >= width or y_min >= height:
                return (f"box {number} {[x_min, y_min, x_max, y_max]} lies entirely outside the "
                        f"{(height, width)} frame (H, W)")
            if not (-width <= x_min and x_max <= 2 * width and -height <= y_min and y_max <= 2 * height):
                return (f"box {number} {[x_min, y_min, x_max, y_max]} reaches further out of the "
                        f"{(height, width)} frame (H, W) than the frame's own size: not a drawn box")
            if x_max <= x_min or y_max <= y_min:
                return f"box {number} {[x_min, y_min, x_max, y_max]} encloses no area (zero width or height)"
        return None
