"""The durable record of an active-learning run: one SQLite file, ``RUN_DIR/ledger.sqlite``.

Every acquisition (item, round, strategy, scores at selection time, model version), every
annotation (label, ROI, annotator, time) and every round's metrics is committed before the loop
moves on, so a run killed at any point continues where it stopped: what was acquired but not yet
annotated is :meth:`Ledger.pending` (sent to the oracle again, never re-selected), and an item that
has an annotation is never asked for again — by any arm, because a label is a fact about the item,
not about the strategy that asked for it.

Durability: WAL journal, ``synchronous=FULL`` (every commit is fsynced), one transaction per
recording call, foreign keys on. One writer process at a time (an exclusive lock on the sidecar
``<ledger>.lock``, released by the OS even on ``kill -9``); any number of readers, also while a run
is going (``Ledger.open(path, readonly=True)`` or the ``sqlite3`` CLI).

A file that is not an xal ledger, fails ``PRAGMA quick_check``, or has a newer schema is refused
with :class:`LedgerError` after a read-only inspection: it is never modified, overwritten or
"repaired". A new ledger is built under a temporary name and linked into place complete, so a
crash while creating one never leaves a half-made file behind.

Schema (version 1; docs/loop.md has the table):

    meta(key, value)                               format, schema_version, xal_version, created_at, run_config
    sessions(session_id, opened_at, xal_version, host, pid)   one row per writer open
    arms(arm_id, strategy, seed, created_at)
    acquisitions(arm_id, round, item_id, source_id, rank, score, uncertainty, dice, soft_dice,
                 roi_energy, pointing_hit, predicted_class, probabilities, extra, model_version,
                 acquired_at, session_id)          PK (arm_id, item_id), UNIQUE (arm_id, round, rank)
    annotations(item_id, source_id, label, label_name, roi_kind, roi_boxes, roi_mask, roi_height,
                roi_width, annotator, annotated_at, first_arm_id, recorded_at, session_id)  PK item_id
    rounds(arm_id, round, labels, metrics, model_version, recorded_at, session_id)  PK (arm_id, round)
    annotation_revisions(item_id, revision, label, ..., annotator, annotated_at, recorded_at, session_id,
                superseded_at, superseded_in_session)      PK (item_id, revision): answers a correction
                                                   replaced (``revise_annotation``); made by the first one

A corrected answer (the browser annotator's "revise", before the run trains on it) replaces the
row in ``annotations``, so every reader takes the latest; the answer it replaced moves, whole, to
``annotation_revisions``. Nothing an expert said is lost.
"""

from __future__ import annotations

from .records import (
    AcquisitionRecord,
    AcquisitionRow,
    Arm,
    LedgerConflict,
    LedgerError,
    RoundRecord,
    acquisition_rows,
)
from .schema import APPLICATION_ID, FORMAT, SCHEMA_VERSION
from .store import Ledger

__all__ = [
    "SCHEMA_VERSION", "APPLICATION_ID", "FORMAT", "LedgerError", "LedgerConflict", "Arm", "AcquisitionRow",
    "AcquisitionRecord", "RoundRecord", "Ledger", "acquisition_rows",
]
