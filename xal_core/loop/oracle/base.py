"""What every oracle is: ``annotate(item_ids)`` → an :class:`OracleAnswer` (an annotation for each
item it can answer now, and the ids it cannot), in the order they were asked."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..annotations import Annotation

__all__ = ["Oracle", "OracleAnswer"]


@dataclass(frozen=True)
class OracleAnswer:
    """``annotations`` for the items answered, ``missing`` the ids not answered yet (asked order)."""

    annotations: list[Annotation] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


class Oracle(ABC):
    """Answers label requests. ``annotator`` names who answers; ``class_names`` the label set."""

    annotator: str
    class_names: tuple[str, ...]
    #: True when a person answers and may draw ROIs the pool lacks (file sheet, browser page), so a
    #: run that trains with ROIs on a pool without any is still meaningful.
    draws_rois: bool = False

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
