"""Oracles: who answers "what is this image?" for the items a strategy acquires.

``SimulatedOracle`` reveals the labels (and ROIs) the dataset already holds — the pool store's
``oracle/labels``, which the scorer never reads — so strategies can be compared offline.
``AnnotationDesk`` is the open batch of a run's ledger and the checked door a browser page's
answers go through (``xal_web``); ``AnswerChecks`` are the rules the sheet and the page share.
``FileOracle`` imports the answers a person typed into a CSV sheet (``write_labelling_sheet``
writes it): each line is checked on its own, bad lines are rejected with a reason (kept in
``rejections`` and written next to the CSV), good lines are kept, and blank labels are simply not
answered yet.

Every oracle answers with an :class:`OracleAnswer`: an :class:`Annotation` for each item it can
answer now, and the ids it cannot (``missing``), in the order they were asked.
"""

from __future__ import annotations

from .answer_checks import AnswerChecks
from .base import Oracle, OracleAnswer
from .desk import AnnotationDesk, BatchItem, InvalidAnswer, NotPending
from .file_oracle import FileOracle, Rejection
from .labelling_sheet import write_labelling_sheet
from .sheet import SHEET_COLUMNS
from .simulated import SimulatedOracle

__all__ = ["Oracle", "OracleAnswer", "SimulatedOracle", "FileOracle", "Rejection", "write_labelling_sheet",
           "SHEET_COLUMNS", "AnswerChecks", "AnnotationDesk", "BatchItem", "InvalidAnswer", "NotPending"]
