"""``Ledger``: one run's SQLite ledger — opening, recording (one fsynced transaction per call,
idempotent where the loop repeats itself after a restart), queries, export and backup. The file's
lock, creation and inspection are ``files``; how each value is stored is ``values``."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..annotations import Annotation, roi_to_json, utc_now
from .files import _canonical, _fsync_dir, _xal_version, create_file, inspect_file, release_lock, take_lock
from .records import AcquisitionRecord, AcquisitionRow, Arm, LedgerConflict, LedgerError, RoundRecord
from .schema import _REVISIONS
from .values import (
    _json_numbers,
    _nan,
    acquisition_values,
    annotation_from_row,
    describe,
    export_acquisition,
    roi_columns,
)

__all__ = ["Ledger"]


class Ledger:
    """The run's ledger. Open with :meth:`open`; use as a context manager or call :meth:`close`.

    Recording methods are each one transaction, committed and fsynced before they return, and are
    idempotent where the loop may repeat them after a restart: recording exactly what is already
    there returns quietly; recording something that contradicts it raises :class:`LedgerConflict`
    and writes nothing.

    One ledger object may be shared by threads (the loop and the browser annotator's request
    handlers in ``xal run --oracle web``): every query and transaction holds the object's lock, so
    a transaction is never interleaved with another thread's statements on the one connection.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection, *, readonly: bool,
                 lock_descriptor: int | None, session_id: int | None) -> None:
        self.path = path
        self.readonly = readonly
        self._db = connection
        self._lock = lock_descriptor
        self._session = session_id
        self._arm_ids: dict[Arm, int] = {}
        self._guard = threading.RLock()  # one statement or transaction at a time on the connection

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, run_config: Mapping[str, Any] | None = None,
             readonly: bool = False) -> Ledger:
        """Create the ledger at ``path`` or open the existing one.

        Args:
            path: usually ``RUN_DIR/ledger.sqlite``; the folder must exist.
            run_config: what must not change between a run and its resumption (dataset, pool, k,
                rounds, strategies, ...), JSON-serialisable. Stored when the ledger is created; on
                reopening it must be equal, else :class:`LedgerError` lists the differing keys.
                ``None`` skips the check (readers).
            readonly: open for reading only (no lock, no session row; a run may be writing).

        Raises:
            LedgerError: not a ledger, corrupt (``PRAGMA quick_check``), newer schema, other
                run_config, another writer holds it. The file is left exactly as it was.
        """
        path = Path(path)
        given = None if run_config is None else _canonical(run_config)
        if readonly:
            if not path.exists():
                raise LedgerError(f"ledger {path}: does not exist")
            inspect_file(path, given)
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                         timeout=30.0, check_same_thread=False)
            connection.execute("PRAGMA query_only = ON")
            return cls(path, connection, readonly=True, lock_descriptor=None, session_id=None)
        if not path.parent.is_dir():
            raise LedgerError(f"ledger {path}: the folder {path.parent} does not exist")
        lock = take_lock(path)
        try:
            if not path.exists():
                for suffix in ("-wal", "-journal"):
                    leftover = path.with_name(path.name + suffix)
                    if leftover.exists():
                        raise LedgerError(
                            f"ledger {path}: does not exist but {leftover.name} does (a ledger was deleted without "
                            f"its journal). Nothing was modified. Restore {path.name} beside it, or move "
                            f"{leftover.name} aside to start afresh")
                create_file(path, given if given is not None else {})
            inspect_file(path, given)
            connection = sqlite3.connect(str(path), isolation_level=None, timeout=30.0, check_same_thread=False)
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise LedgerError(f"ledger {path}: the file system does not support SQLite's WAL mode "
                                      f"(got {mode!r}); put RUN_DIR on a local disk")
                connection.execute("PRAGMA synchronous = FULL")
                connection.execute("PRAGMA foreign_keys = ON")
                ledger = cls(path, connection, readonly=False, lock_descriptor=lock, session_id=None)
                ledger._session = ledger._open_session()
            except BaseException:
                connection.close()
                raise
            return ledger
        except BaseException:
            release_lock(lock)
            raise

    def _open_session(self) -> int:
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO sessions (opened_at, xal_version, host, pid) VALUES (?, ?, ?, ?)",
                                (utc_now(), _xal_version(), socket.gethostname(), os.getpid()))
            return int(cursor.lastrowid)

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed when the last connection closes) and the lock."""
        with self._guard:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
            release_lock(self._lock)
            self._lock = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, readonly={self.readonly})"

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._guard:
            if self._db is None:
                raise LedgerError(f"ledger {self.path}: closed")
            if self.readonly:
                raise LedgerError(f"ledger {self.path}: opened read-only")
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._guard:
            if self._db is None:
                raise LedgerError(f"ledger {self.path}: closed")
            return self._db.execute(sql, parameters).fetchall()

    def _arm_id(self, arm: Arm, *, create: bool = False) -> int | None:
        if not isinstance(arm, Arm):
            raise TypeError(f"arm: expected an Arm(strategy, seed), got {type(arm).__name__}")
        with self._guard:
            if arm in self._arm_ids:
                return self._arm_ids[arm]
            rows = self._query("SELECT arm_id FROM arms WHERE strategy = ? AND seed = ?", (arm.strategy, arm.seed))
            if not rows and create:
                cursor = self._db.execute("INSERT INTO arms (strategy, seed, created_at) VALUES (?, ?, ?)",
                                          (arm.strategy, arm.seed, utc_now()))
                rows = [(cursor.lastrowid,)]
            if not rows:
                return None
            if not self._db.in_transaction:  # an id made inside a transaction is cached only once committed
                self._arm_ids[arm] = int(rows[0][0])
            return int(rows[0][0])

    # ------------------------------------------------------------------ recording
    def record_acquisitions(self, arm: Arm, round: int, rows: Sequence[AcquisitionRow], model_version: str) -> None:
        """Record the items ``arm`` acquires in ``round`` (one transaction).

        Ranks must be ``0 .. len(rows)-1``. Recording the same items with the same ranks again for
        the same round returns quietly (the first record is kept). Raises :class:`LedgerConflict` when
        the round already holds other items, an item was already acquired by this arm (named),
        an earlier round than one already acquired is recorded, or an item id carries another
        source id than it did before (the pool changed under the run).
        """
        round = self._round(round)
        rows = list(rows)
        if not rows:
            raise ValueError(f"{arm} round {round}: no acquisitions to record")
        if not isinstance(model_version, str) or not model_version:
            raise ValueError("model_version must be a non-empty string")
        values = [acquisition_values(row) for row in rows]
        items = [v[0] for v in values]
        if len(set(items)) != len(items):
            twice = sorted({i for i in items if items.count(i) > 1})
            raise ValueError(f"{arm} round {round}: item ids listed more than once: {twice}")
        if sorted(v[2] for v in values) != list(range(len(rows))):
            raise ValueError(f"{arm} round {round}: ranks must be 0..{len(rows) - 1}, each once")
        with self._transaction() as db:
            arm_id = self._arm_id(arm, create=True)
            existing = db.execute("SELECT rank, item_id FROM acquisitions WHERE arm_id = ? AND round = ? ORDER BY rank",
                                  (arm_id, round)).fetchall()
            if existing:
                wanted = sorted((v[2], v[0]) for v in values)
                if [tuple(r) for r in existing] == wanted:
                    return
                raise LedgerConflict(
                    f"ledger {self.path}: {arm} round {round} already acquired items "
                    f"{[r[1] for r in existing][:20]} (by rank), not {[w[1] for w in wanted][:20]}; a recorded "
                    f"acquisition is never replaced")
            latest = db.execute("SELECT MAX(round) FROM acquisitions WHERE arm_id = ?", (arm_id,)).fetchone()[0]
            if latest is not None and round < latest:
                raise LedgerConflict(f"ledger {self.path}: {arm} already acquired in round {latest}; "
                                     f"cannot record round {round} after it")
            known = self._lookup(db, "SELECT item_id, round FROM acquisitions WHERE arm_id = ? AND item_id IN ({})",
                                 items, (arm_id,))
            if known:
                named = ", ".join(f"{item} (round {r})" for item, r in sorted(known.items())[:20])
                raise LedgerConflict(f"ledger {self.path}: {arm} already acquired item(s) {named}; "
                                     f"an item is acquired once per arm")
            sources = self._lookup(db, "SELECT item_id, source_id FROM acquisitions WHERE item_id IN ({})", items)
            clash = [(v[0], sources[v[0]], v[1]) for v in values if v[0] in sources and sources[v[0]] != v[1]]
            if clash:
                item, before, now = clash[0]
                raise LedgerConflict(f"ledger {self.path}: item {item} was recorded with source id {before!r}, now "
                                     f"{now!r}: the pool changed under this run")
            stamp = utc_now()
            db.executemany(
                "INSERT INTO acquisitions (arm_id, round, item_id, source_id, rank, score, uncertainty, dice, "
                "soft_dice, roi_energy, pointing_hit, predicted_class, probabilities, extra, model_version, "
                "acquired_at, session_id) VALUES (?, ?, " + ", ".join("?" * 15) + ")",
                [(arm_id, round, *v, model_version, stamp, self._session) for v in values])

    @staticmethod
    def _round(round: int) -> int:
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round must be a non-negative integer, got {round!r}")
        return round

    @staticmethod
    def _lookup(db: sqlite3.Connection, sql: str, items: Sequence[int], leading: tuple[Any, ...] = (),
                batch: int = 500) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for start in range(0, len(items), batch):
            part = list(items[start:start + batch])
            query = sql.format(", ".join("?" * len(part)))
            found.update({int(r[0]): r[1] for r in db.execute(query, (*leading, *part))})
        return found

    def record_annotations(self, arm: Arm, annotations: Sequence[Annotation]) -> None:
        """Record the oracle's answers for items ``arm`` acquired (one transaction).

        An item's annotation is stored once for the whole ledger: an item another arm already had
        annotated is not pending for this one. Recording the same answer again (same label and ROI)
        returns quietly and keeps the first record; a different answer for an annotated item, an
        answer for an item this arm did not acquire, or two different answers in one call raise
        :class:`LedgerConflict` — an expert label is never overwritten.
        """
        answers: dict[int, Annotation] = {}
        for annotation in annotations:
            if not isinstance(annotation, Annotation):
                raise TypeError(f"expected Annotation, got {type(annotation).__name__}")
            before = answers.get(annotation.item_id)
            if before is not None and not before.same_answer(annotation):
                raise LedgerConflict(f"ledger {self.path}: two different answers for item {annotation.item_id} in "
                                     f"one call: {describe(before)} and {describe(annotation)}")
            answers.setdefault(annotation.item_id, annotation)
        if not answers:
            return
        items = list(answers)
        with self._transaction() as db:
            arm_id = self._arm_id(arm)
            acquired = {} if arm_id is None else self._lookup(
                db, "SELECT item_id, source_id FROM acquisitions WHERE arm_id = ? AND item_id IN ({})", items,
                (arm_id,))
            strangers = [item for item in items if item not in acquired]
            if strangers:
                raise LedgerConflict(f"ledger {self.path}: {arm} did not acquire item(s) {strangers[:20]}; only "
                                     f"acquired items are annotated")
            recorded = self._annotations_of(db, items)
            for item, annotation in answers.items():
                if item in recorded and not recorded[item].same_answer(annotation):
                    raise LedgerConflict(
                        f"ledger {self.path}: item {item} is already annotated as {describe(recorded[item])}; "
                        f"the new answer {describe(annotation)} differs and an expert label is never "
                        f"overwritten")
            new = [a for item, a in answers.items() if item not in recorded]
            stamp = utc_now()
            db.executemany(
                "INSERT INTO annotations (item_id, source_id, label, label_name, roi_kind, roi_boxes, roi_mask, "
                "roi_height, roi_width, annotator, annotated_at, first_arm_id, recorded_at, session_id) "
                "VALUES (" + ", ".join("?" * 14) + ")",
                [(a.item_id, acquired[a.item_id], a.label, a.label_name, *roi_columns(a), a.annotator, a.time,
                  arm_id, stamp, self._session) for a in new])

    def revise_annotation(self, annotation: Annotation, *, revises: int) -> int:
        """Replace an item's answer with a corrected one (one transaction); returns its revision number.

        The answer it replaces is kept, whole, in ``annotation_revisions`` (with when and in which
        session it was superseded); ``annotations`` then holds the corrected answer, so every reader
        (the loop's training set, ``labeled``, ``annotations``, the ``sqlite3`` recipes) reads the
        latest revision. ``revises`` is the revision the caller saw (0 = the first answer): when
        another revision was recorded meanwhile, :class:`LedgerConflict` is raised and nothing is
        written, so of two people correcting one answer the second is told, not overwritten. The
        same answer as the current one (label and ROI) returns quietly, revision unchanged.

        Whether an answer may still be revised (its round not yet trained on) is the caller's rule
        (``AnnotationDesk``); the ledger only keeps the history.
        """
        if not isinstance(annotation, Annotation):
            raise TypeError(f"expected Annotation, got {type(annotation).__name__}")
        if isinstance(revises, bool) or not isinstance(revises, int) or revises < 0:
            raise ValueError(f"revises must be a non-negative integer, got {revises!r}")
        item = annotation.item_id
        with self._transaction() as db:
            current = self._annotations_of(db, [item]).get(item)
            if current is None:
                raise LedgerConflict(f"ledger {self.path}: item {item} has no answer to revise")
            revision = self._revision_counts(db, [item]).get(item, 0)
            if revision != revises:
                raise LedgerConflict(f"ledger {self.path}: item {item}'s answer is at revision {revision} "
                                     f"({describe(current)}), not {revises}: it was revised meanwhile")
            if current.same_answer(annotation):
                return revision
            db.execute(_REVISIONS)  # a ledger made before revisions existed gets the table now
            stamp = utc_now()
            db.execute(
                "INSERT INTO annotation_revisions (item_id, revision, label, label_name, roi_kind, roi_boxes, "
                "roi_mask, roi_height, roi_width, annotator, annotated_at, recorded_at, session_id, superseded_at, "
                "superseded_in_session) SELECT item_id, ?, label, label_name, roi_kind, roi_boxes, roi_mask, "
                "roi_height, roi_width, annotator, annotated_at, recorded_at, session_id, ?, ? FROM annotations "
                "WHERE item_id = ?", (revision, stamp, self._session, item))
            db.execute(
                "UPDATE annotations SET label = ?, label_name = ?, roi_kind = ?, roi_boxes = ?, roi_mask = ?, "
                "roi_height = ?, roi_width = ?, annotator = ?, annotated_at = ?, recorded_at = ?, session_id = ? "
                "WHERE item_id = ?", (annotation.label, annotation.label_name, *roi_columns(annotation),
                                      annotation.annotator, annotation.time, stamp, self._session, item))
            return revision + 1

    def revision_counts(self, items: Sequence[int]) -> dict[int, int]:
        """``item_id → revision`` of the current answer (0 = never revised; absent items: 0)."""
        with self._guard:
            if self._db is None:
                raise LedgerError(f"ledger {self.path}: closed")
            return self._revision_counts(self._db, [int(i) for i in items])

    def superseded(self, item_id: int) -> list[Annotation]:
        """The answers an item's current one replaced, oldest first (empty when never revised)."""
        if not self._has_revisions():
            return []
        columns = self._ANNOTATION_COLUMNS
        return [annotation_from_row(row) for row in self._query(
            f"SELECT {columns} FROM annotation_revisions WHERE item_id = ? ORDER BY revision", (int(item_id),))]

    def _has_revisions(self) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'annotation_revisions'"))

    def _revision_counts(self, db: sqlite3.Connection, items: Sequence[int]) -> dict[int, int]:
        if not items or not db.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND "
                                       "name = 'annotation_revisions'").fetchone():
            return {}
        return self._lookup(db, "SELECT item_id, COUNT(*) FROM annotation_revisions WHERE item_id IN ({}) "
                                "GROUP BY item_id", list(items))

    _ANNOTATION_COLUMNS = "item_id, label, label_name, roi_kind, roi_boxes, roi_mask, roi_height, roi_width, " \
                          "annotator, annotated_at"

    def _annotations_of(self, db: sqlite3.Connection, items: Sequence[int]) -> dict[int, Annotation]:
        found: dict[int, Annotation] = {}
        for start in range(0, len(items), 500):
            part = list(items[start:start + 500])
            sql = f"SELECT {self._ANNOTATION_COLUMNS} FROM annotations WHERE item_id IN ({', '.join('?' * len(part))})"
            for row in db.execute(sql, part):
                found[int(row[0])] = annotation_from_row(row)
        return found

    def record_round(self, arm: Arm, round: int, labels: int, metrics: Mapping[str, float],
                     model_version: str) -> None:
        """Record a round's evaluation: the model trained on ``labels`` labels, its ``metrics``.

        The same record again returns quietly; a different one for a recorded round raises
        :class:`LedgerConflict`. NaN metrics are kept (stored as JSON null).
        """
        round = self._round(round)
        if isinstance(labels, bool) or not isinstance(labels, int) or labels < 0:
            raise ValueError(f"labels must be a non-negative integer, got {labels!r}")
        if not isinstance(model_version, str) or not model_version:
            raise ValueError("model_version must be a non-empty string")
        encoded = _json_numbers(dict(metrics), "metrics")
        with self._transaction() as db:
            arm_id = self._arm_id(arm, create=True)
            existing = db.execute("SELECT labels, metrics, model_version FROM rounds WHERE arm_id = ? AND round = ?",
                                  (arm_id, round)).fetchone()
            if existing is not None:
                if tuple(existing) == (labels, encoded, model_version):
                    return
                raise LedgerConflict(f"ledger {self.path}: {arm} round {round} is already recorded (labels "
                                     f"{existing[0]}, model {existing[2]}, metrics {existing[1]}); not replacing it "
                                     f"with labels {labels}, model {model_version}, metrics {encoded}")
            db.execute("INSERT INTO rounds (arm_id, round, labels, metrics, model_version, recorded_at, session_id) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (arm_id, round, labels, encoded, model_version, utc_now(),
                                                        self._session))

    # ------------------------------------------------------------------ reading
    def arms(self) -> list[Arm]:
        """Every arm, in the order they were first recorded."""
        return [Arm(strategy, int(seed)) for strategy, seed in
                self._query("SELECT strategy, seed FROM arms ORDER BY arm_id")]

    def pending(self, arm: Arm) -> list[int]:
        """Items ``arm`` acquired that have no annotation yet, in acquisition order (round, rank)."""
        arm_id = self._arm_id(arm)
        if arm_id is None:
            return []
        return [int(r[0]) for r in self._query(
            "SELECT a.item_id FROM acquisitions a LEFT JOIN annotations n ON n.item_id = a.item_id "
            "WHERE a.arm_id = ? AND n.item_id IS NULL ORDER BY a.round, a.rank", (arm_id,))]

    def labeled(self, arm: Arm) -> dict[int, int]:
        """``item_id → label`` of the items ``arm`` acquired and that are annotated, in acquisition order."""
        arm_id = self._arm_id(arm)
        if arm_id is None:
            return {}
        return {int(item): int(label) for item, label in self._query(
            "SELECT a.item_id, n.label FROM acquisitions a JOIN annotations n ON n.item_id = a.item_id "
            "WHERE a.arm_id = ? ORDER BY a.round, a.rank", (arm_id,))}

    def annotations(self, arm: Arm) -> list[Annotation]:
        """The annotations of ``arm``'s labeled items (with ROIs), in acquisition order."""
        arm_id = self._arm_id(arm)
        if arm_id is None:
            return []
        columns = ", ".join(f"n.{c.strip()}" for c in self._ANNOTATION_COLUMNS.split(","))
        return [annotation_from_row(row) for row in self._query(
            f"SELECT {columns} FROM acquisitions a JOIN annotations n ON n.item_id = a.item_id "
            "WHERE a.arm_id = ? ORDER BY a.round, a.rank", (arm_id,))]

    def annotation(self, item_id: int) -> Annotation | None:
        """The item's annotation, whichever arm asked for it, or None."""
        with self._guard:
            found = self._annotations_of(self._db, [int(item_id)])
        return found.get(int(item_id))

    def acquisitions(self, arm: Arm, round: int | None = None) -> list[AcquisitionRecord]:
        """``arm``'s acquisitions (one round, or all), in acquisition order, scores as recorded (NULL → NaN)."""
        arm_id = self._arm_id(arm)
        if arm_id is None:
            return []
        where, parameters = ("AND round = ?", (arm_id, self._round(round))) if round is not None else ("", (arm_id,))
        rows = self._query(
            "SELECT round, item_id, source_id, rank, score, uncertainty, dice, soft_dice, roi_energy, pointing_hit, "
            f"predicted_class, probabilities, extra, model_version, acquired_at FROM acquisitions WHERE arm_id = ? "
            f"{where} ORDER BY round, rank", parameters)
        records = []
        for r in rows:
            probabilities = None if r[11] is None else tuple(_nan(p) for p in json.loads(r[11]))
            extra = {key: _nan(value) for key, value in json.loads(r[12]).items()}
            row = AcquisitionRow(int(r[1]), r[2], int(r[3]), *(_nan(v) for v in r[4:10]),
                                 predicted_class=r[10], probabilities=probabilities, extra=extra)
            records.append(AcquisitionRecord(arm, int(r[0]), row, r[13], r[14]))
        return records

    def rounds(self, arm: Arm) -> list[RoundRecord]:
        """``arm``'s evaluated rounds, in order."""
        arm_id = self._arm_id(arm)
        if arm_id is None:
            return []
        return [RoundRecord(int(r), int(labels), {k: _nan(v) for k, v in json.loads(metrics).items()}, model, at)
                for r, labels, metrics, model, at in self._query(
                    "SELECT round, labels, metrics, model_version, recorded_at FROM rounds WHERE arm_id = ? "
                    "ORDER BY round", (arm_id,))]

    def last_round(self, arm: Arm) -> int | None:
        """The highest round whose evaluation is recorded, or None."""
        arm_id = self._arm_id(arm)
        if arm_id is None:
            return None
        return self._query("SELECT MAX(round) FROM rounds WHERE arm_id = ?", (arm_id,))[0][0]

    @property
    def meta(self) -> dict[str, str]:
        """The meta table (``format``, ``schema_version``, ``xal_version``, ``created_at``, ``run_config``)."""
        return dict(self._query("SELECT key, value FROM meta"))

    @property
    def run_config(self) -> dict[str, Any]:
        """The run configuration stored when the ledger was created."""
        return json.loads(self.meta["run_config"])

    def export(self) -> dict[str, Any]:
        """A deterministic dump of the content, for comparing two runs.

        Leaves out what depends on when and how often the run was (re)started: wall-clock times,
        sessions, the xal version, which arm asked first for a shared annotation. Arms are sorted
        by (strategy, seed), annotations by item id; missing numbers are None; mask ROIs appear as
        their size and the SHA-256 of their packed bytes.
        """
        meta = self.meta
        arms = []
        for arm in sorted(self.arms()):
            arms.append({
                "strategy": arm.strategy,
                "seed": arm.seed,
                "acquisitions": [export_acquisition(record) for record in self.acquisitions(arm)],
                "rounds": [{"round": r.round, "labels": r.labels, "model_version": r.model_version,
                            "metrics": {k: None if math.isnan(v) else v for k, v in r.metrics.items()}}
                           for r in self.rounds(arm)],
                "pending": self.pending(arm),
            })
        columns = self._ANNOTATION_COLUMNS
        annotations = [annotation_from_row(row) for row in
                       self._query(f"SELECT {columns} FROM annotations ORDER BY item_id")]
        return {
            "format": meta["format"],
            "schema_version": int(meta["schema_version"]),
            "run_config": json.loads(meta["run_config"]),
            "arms": arms,
            "annotations": [{"item_id": a.item_id, "label": a.label, "label_name": a.label_name,
                             "roi": roi_to_json(a.roi), "annotator": a.annotator} for a in annotations],
        }

    def backup(self, destination: str | os.PathLike[str], *, replace: bool = False) -> None:
        """Copy a consistent snapshot to ``destination`` (SQLite's online backup; safe while a run writes).

        An existing ``destination`` is an error unless ``replace=True``; the copy is then written
        aside and renamed over it, so a crash never leaves a half-written backup in its place.
        """
        destination = Path(destination)
        if destination.exists() and not replace:
            raise FileExistsError(f"{destination}: exists; pass replace=True to refresh a backup")
        if destination.resolve() == self.path.resolve():
            raise ValueError(f"{destination}: is the ledger itself")
        if self._db is None:
            raise LedgerError(f"ledger {self.path}: closed")
        temporary = destination.with_name(f".{destination.name}.backup-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        target = sqlite3.connect(str(temporary))
        try:
            with self._guard:
                self._db.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # a standalone file: no -wal beside it
        finally:
            target.close()
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
        _fsync_dir(destination.parent)
