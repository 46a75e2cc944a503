"""The ledger's SQL schema (version 1) and the constants that identify an xal ledger file.

``annotation_revisions`` came later, within schema 1: a ledger made before it has no such table and
reads exactly as before; the table is made, in the same transaction, by the first revision
recorded into it (``_REVISIONS``). Readers of schema 1 that do not know it keep reading the current
answers from ``annotations``, so the file stays readable by every xal of schema 1.
"""

from __future__ import annotations

__all__ = ["APPLICATION_ID", "FORMAT", "SCHEMA_VERSION"]

FORMAT = "xal-ledger"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x58414C4C  # "XALL": `PRAGMA application_id` of every xal ledger
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SCORE_COLUMNS = ("score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit")

_REVISIONS = """
CREATE TABLE IF NOT EXISTS annotation_revisions (
    item_id INTEGER NOT NULL REFERENCES annotations (item_id),
    revision INTEGER NOT NULL CHECK (revision >= 0),
    label INTEGER NOT NULL CHECK (label >= 0),
    label_name TEXT NOT NULL,
    roi_kind TEXT CHECK (roi_kind IN ('boxes', 'mask')),
    roi_boxes TEXT,
    roi_mask BLOB,
    roi_height INTEGER,
    roi_width INTEGER,
    annotator TEXT NOT NULL,
    annotated_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    session_id INTEGER NOT NULL REFERENCES sessions (session_id),
    superseded_at TEXT NOT NULL,
    superseded_in_session INTEGER NOT NULL REFERENCES sessions (session_id),
    PRIMARY KEY (item_id, revision)
) STRICT
"""
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE sessions (
    session_id INTEGER PRIMARY KEY,
    opened_at TEXT NOT NULL,
    xal_version TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
) STRICT;
CREATE TABLE arms (
    arm_id INTEGER PRIMARY KEY,
    strategy TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (strategy, seed)
) STRICT;
CREATE TABLE acquisitions (
    arm_id INTEGER NOT NULL REFERENCES arms (arm_id),
    round INTEGER NOT NULL CHECK (round >= 0),
    item_id INTEGER NOT NULL CHECK (item_id >= 0),
    source_id TEXT NOT NULL,
    rank INTEGER NOT NULL CHECK (rank >= 0),
    score REAL,
    uncertainty REAL,
    dice REAL,
    soft_dice REAL,
    roi_energy REAL,
    pointing_hit REAL,
    predicted_class INTEGER,
    probabilities TEXT,
    extra TEXT NOT NULL,
    model_version TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    session_id INTEGER NOT NULL REFERENCES sessions (session_id),
    PRIMARY KEY (arm_id, item_id),
    UNIQUE (arm_id, round, rank)
) STRICT;
CREATE INDEX acquisitions_by_item ON acquisitions (item_id);
CREATE TABLE annotations (
    item_id INTEGER PRIMARY KEY CHECK (item_id >= 0),
    source_id TEXT NOT NULL,
    label INTEGER NOT NULL CHECK (label >= 0),
    label_name TEXT NOT NULL,
    roi_kind TEXT CHECK (roi_kind IN ('boxes', 'mask')),
    roi_boxes TEXT,
    roi_mask BLOB,
    roi_height INTEGER,
    roi_width INTEGER,
    annotator TEXT NOT NULL,
    annotated_at TEXT NOT NULL,
    first_arm_id INTEGER NOT NULL REFERENCES arms (arm_id),
    recorded_at TEXT NOT NULL,
    session_id INTEGER NOT NULL REFERENCES sessions (session_id),
    CHECK ((roi_kind IS NULL AND roi_boxes IS NULL AND roi_mask IS NULL)
        OR (roi_kind = 'boxes' AND roi_boxes IS NOT NULL AND roi_mask IS NULL)
        OR (roi_kind = 'mask' AND roi_mask IS NOT NULL AND roi_height > 0 AND roi_width > 0))
) STRICT;
CREATE TABLE rounds (
    arm_id INTEGER NOT NULL REFERENCES arms (arm_id),
    round INTEGER NOT NULL CHECK (round >= 0),
    labels INTEGER NOT NULL CHECK (labels >= 0),
    metrics TEXT NOT NULL,
    model_version TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    session_id INTEGER NOT NULL REFERENCES sessions (session_id),
    PRIMARY KEY (arm_id, round)
) STRICT;
""" + _REVISIONS
_TABLES = ("meta", "sessions", "arms", "acquisitions", "annotations", "rounds")

