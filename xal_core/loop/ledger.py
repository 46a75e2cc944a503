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
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .annotations import Annotation, BoxRoi, MaskRoi, roi_to_json, utc_now

__all__ = [
    "SCHEMA_VERSION", "APPLICATION_ID", "FORMAT", "LedgerError", "LedgerConflict", "Arm", "AcquisitionRow",
    "AcquisitionRecord", "RoundRecord", "Ledger", "acquisition_rows",
]

FORMAT = "xal-ledger"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x58414C4C  # "XALL": `PRAGMA application_id` of every xal ledger
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SCORE_COLUMNS = ("score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit")

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
"""
_TABLES = ("meta", "sessions", "arms", "acquisitions", "annotations", "rounds")


class LedgerError(RuntimeError):
    """The ledger cannot be used as it is: not a ledger, corrupt, newer schema, other run config,
    locked by another writer. The message names the file and how to recover; the file is untouched."""


class LedgerConflict(LedgerError):
    """A recording call contradicts what the ledger holds (another label for an annotated item,
    other items for an acquired round, ...). Nothing of that call was written."""


@dataclass(frozen=True, order=True)
class Arm:
    """One (strategy, seed) pair of a run: its own labeled set and rounds."""

    strategy: str
    seed: int

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(f"arm: strategy must be a non-empty string, got {self.strategy!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"arm: seed must be an integer, got {self.seed!r}")

    def __str__(self) -> str:
        return f"{self.strategy}/seed={self.seed}"


@dataclass(frozen=True)
class AcquisitionRow:
    """One selected item and its scores at selection time (NaN or None = not computed; stored as NULL).

    Attributes:
        item_id: the pool's integer id; ``source_id`` the dataset's id (kept for humans and as a
            check that a resumed run reads the same pool).
        rank: position in this round's acquisition list, 0 = acquired first; a round's ranks are
            ``0 .. n-1``. Round 0 (the initial random draw) uses the draw order.
        score ... pointing_hit: the dual score and the contract's per-item values (DESIGN.md §2).
        predicted_class, probabilities: the model's prediction when it was selected.
        extra: any other named per-item numbers a strategy wants kept (BALD, a diversity term).
    """

    item_id: int
    source_id: str
    rank: int
    score: float | None = None
    uncertainty: float | None = None
    dice: float | None = None
    soft_dice: float | None = None
    roi_energy: float | None = None
    pointing_hit: float | None = None
    predicted_class: int | None = None
    probabilities: tuple[float, ...] | None = None
    extra: Mapping[str, float] = field(default_factory=dict)


def acquisition_rows(ranking: Any, source_ids: Sequence[str] | Mapping[int, str]) -> list[AcquisitionRow]:
    """Rows for :meth:`Ledger.record_acquisitions` from a ``PoolRanking`` (``rank_pool``'s result).

    Args:
        ranking: anything with ``selection.ids``, ``selection.scores`` (best first) and ``columns``
            (per-item tensors aligned with the ids, as ``BatchScores.columns()`` names them); columns
            without a field of their own go to ``extra`` when they hold one number per item.
        source_ids: the selected items' source ids, aligned with ``selection.ids``, or a mapping.
    """
    ids = [int(i) for i in ranking.selection.ids.tolist()]
    scores = ranking.selection.scores.tolist()
    columns = {name: value.tolist() for name, value in dict(ranking.columns).items()}
    names = dict(source_ids) if isinstance(source_ids, Mapping) else dict(zip(ids, source_ids, strict=True))
    own = {"uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "predicted_class", "probabilities"}
    rows = []
    for rank, item in enumerate(ids):
        value = {name: column[rank] for name, column in columns.items()}
        extra = {name: float(v) for name, v in value.items() if name not in own and isinstance(v, int | float)}
        predicted = value.get("predicted_class")
        probabilities = value.get("probabilities")
        rows.append(AcquisitionRow(
            item, names[item], rank, score=scores[rank],
            **{name: value.get(name) for name in ("uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit")},
            predicted_class=None if predicted is None else int(predicted),
            probabilities=None if probabilities is None else tuple(float(p) for p in probabilities),
            extra=extra))
    return rows


@dataclass(frozen=True)
class AcquisitionRecord:
    """An acquisition as the ledger holds it."""

    arm: Arm
    round: int
    row: AcquisitionRow
    model_version: str
    acquired_at: str


@dataclass(frozen=True)
class RoundRecord:
    """One round's evaluation: ``labels`` the model was trained on, ``metrics`` (NaN kept as NaN)."""

    round: int
    labels: int
    metrics: dict[str, float]
    model_version: str
    recorded_at: str


# ---------------------------------------------------------------------------------------- helpers
def _xal_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("xal-ml")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _real(value: Any, what: str) -> float | None:
    """A finite or infinite float; NaN and None → None (SQL NULL)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number or None, got {value!r}") from None
    return None if math.isnan(number) else number


def _json_numbers(values: Mapping[str, Any] | Sequence[Any], what: str) -> str:
    """Canonical JSON of numbers (keys sorted; NaN and ±inf → null, so SQLite's JSON functions read it)."""
    finite = lambda v, name: None if (n := _real(v, name)) is None or math.isinf(n) else n  # noqa: E731
    if isinstance(values, Mapping):
        for key in values:
            if not isinstance(key, str):
                raise ValueError(f"{what}: keys must be strings, got {key!r}")
        clean: Any = {key: finite(value, f"{what}[{key!r}]") for key, value in values.items()}
    else:
        clean = [finite(value, f"{what}[{i}]") for i, value in enumerate(values)]
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"run_config must be JSON-serialisable (finite numbers, string keys): {error}") from None


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_MISSING = object()


def _config_differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    old, new = _flatten(stored), _flatten(given)
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a != b:
            show = lambda v: "(absent)" if v is _MISSING else json.dumps(v)  # noqa: E731
            lines.append(f"{key}: ledger {show(a)}, now {show(b)}")
    return lines


def _fsync_dir(path: Path) -> None:
    with suppress(OSError):  # not every platform can open a directory
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _corrupt_advice(path: Path) -> str:
    return (f"To recover: restore {path.name} from a backup (Ledger.backup, or a copy of the run folder); or move "
            f"it aside (`mv {path} {path}.bad`) to start the run afresh — its labels are then not reused; "
            f"`sqlite3 {path}.bad .dump` prints the rows that are still readable")


def _refuse(path: Path, problem: str, advice: str | None = None) -> LedgerError:
    return LedgerError(f"ledger {path}: {problem}. The file was NOT modified. {advice or _corrupt_advice(path)}.")


# ---------------------------------------------------------------------------------------- ledger
class Ledger:
    """The run's ledger. Open with :meth:`open`; use as a context manager or call :meth:`close`.

    Recording methods are each one transaction, committed and fsynced before they return, and are
    idempotent where the loop may repeat them after a restart: recording exactly what is already
    there returns quietly; recording something that contradicts it raises :class:`LedgerConflict`
    and writes nothing.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection, *, readonly: bool,
                 lock_descriptor: int | None, session_id: int | None) -> None:
        self.path = path
        self.readonly = readonly
        self._db = connection
        self._lock = lock_descriptor
        self._session = session_id
        self._arm_ids: dict[Arm, int] = {}

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
            cls._inspect(path, given)
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                         timeout=30.0)
            connection.execute("PRAGMA query_only = ON")
            return cls(path, connection, readonly=True, lock_descriptor=None, session_id=None)
        if not path.parent.is_dir():
            raise LedgerError(f"ledger {path}: the folder {path.parent} does not exist")
        lock = cls._take_lock(path)
        try:
            if not path.exists():
                for suffix in ("-wal", "-journal"):
                    leftover = path.with_name(path.name + suffix)
                    if leftover.exists():
                        raise LedgerError(
                            f"ledger {path}: does not exist but {leftover.name} does (a ledger was deleted without "
                            f"its journal). Nothing was modified. Restore {path.name} beside it, or move "
                            f"{leftover.name} aside to start afresh")
                cls._create(path, given if given is not None else {})
            cls._inspect(path, given)
            connection = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
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
            cls._release_lock(lock)
            raise

    @staticmethod
    def _take_lock(path: Path) -> int | None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; one writer is then the caller's promise
            return None
        lock_path = path.with_name(path.name + ".lock")
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise LedgerError(f"ledger {path}: another writer holds it ({lock_path.name}: another process, or an "
                              f"open Ledger in this one); one run per RUN_DIR — wait for it to finish, or open the "
                              f"ledger read-only") from None
        return descriptor

    @staticmethod
    def _release_lock(descriptor: int | None) -> None:
        if descriptor is not None:
            os.close(descriptor)  # closing releases the flock

    @staticmethod
    def _create(path: Path, run_config: dict[str, Any]) -> None:
        """Build a complete empty ledger under a temporary name, then link it into place (no clobber)."""
        temporary = path.with_name(f".{path.name}.creating-{os.getpid()}")
        for stale in (temporary, temporary.with_name(temporary.name + "-journal")):
            stale.unlink(missing_ok=True)
        connection = sqlite3.connect(str(temporary), isolation_level=None)
        try:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            meta = {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), "xal_version": _xal_version(),
                    "created_at": utc_now(), "run_config": json.dumps(run_config, sort_keys=True)}
            connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
            connection.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file header
        finally:
            connection.close()
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails if a ledger appeared meanwhile: never overwrite one
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    @staticmethod
    def _inspect(path: Path, run_config: dict[str, Any] | None) -> None:
        """Check a ledger file through a read-only connection; raise LedgerError, never modify it."""
        if not path.is_file():
            raise _refuse(path, "is not a regular file", "Move it aside or choose another RUN_DIR")
        with open(path, "rb") as handle:
            head = handle.read(100)
        if len(head) == 0:
            raise _refuse(path, "is an empty file, not an xal ledger")
        if not head.startswith(_SQLITE_MAGIC):
            raise _refuse(path, "is not an SQLite database (wrong header), so not an xal ledger")
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                         timeout=30.0)
        except sqlite3.Error as error:
            raise _refuse(path, f"cannot be opened ({error})") from None
        try:
            try:
                application_id = connection.execute("PRAGMA application_id").fetchone()[0]
                user_version = connection.execute("PRAGMA user_version").fetchone()[0]
                problems = [row[0] for row in connection.execute("PRAGMA quick_check(10)")]
            except sqlite3.DatabaseError as error:
                raise _refuse(path, f"is corrupt (SQLite: {error})") from None
            if problems != ["ok"]:
                raise _refuse(path, "fails its integrity check (PRAGMA quick_check: " + "; ".join(problems) + ")")
            if application_id != APPLICATION_ID:
                raise _refuse(path, f"is an SQLite database but not an xal ledger (application_id {application_id:#x})",
                              "Move it aside or choose another RUN_DIR")
            if user_version > SCHEMA_VERSION:
                raise _refuse(path, f"was written by a newer xal (ledger schema {user_version}; this xal "
                              f"{_xal_version()} reads schema {SCHEMA_VERSION} and older)",
                              "Upgrade xal to continue this run, or choose another RUN_DIR")
            try:
                tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
                meta = dict(connection.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
            except sqlite3.DatabaseError as error:
                raise _refuse(path, f"is corrupt (SQLite: {error})") from None
            missing = [name for name in _TABLES if name not in tables]
            if user_version < SCHEMA_VERSION or missing or meta.get("format") != FORMAT or \
                    meta.get("schema_version") != str(user_version):
                raise _refuse(path, f"is an incomplete or damaged xal ledger (schema {user_version}, missing tables: "
                              f"{', '.join(missing) or 'none'}, format {meta.get('format')!r})")
            if run_config is not None:
                stored = json.loads(meta["run_config"])
                differences = _config_differences(stored, run_config)
                if differences:
                    raise _refuse(path, "was started with another run configuration — " + "; ".join(differences),
                                  "Rerun with the ledger's configuration to continue it, or choose a new RUN_DIR")
        finally:
            connection.close()

    def _open_session(self) -> int:
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO sessions (opened_at, xal_version, host, pid) VALUES (?, ?, ?, ?)",
                                (utc_now(), _xal_version(), socket.gethostname(), os.getpid()))
            return int(cursor.lastrowid)

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed when the last connection closes) and the lock."""
        if self._db is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]
        self._release_lock(self._lock)
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
        if self._db is None:
            raise LedgerError(f"ledger {self.path}: closed")
        return self._db.execute(sql, parameters).fetchall()

    def _arm_id(self, arm: Arm, *, create: bool = False) -> int | None:
        if not isinstance(arm, Arm):
            raise TypeError(f"arm: expected an Arm(strategy, seed), got {type(arm).__name__}")
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
        values = [self._acquisition_values(row) for row in rows]
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
    def _acquisition_values(row: AcquisitionRow) -> tuple[Any, ...]:
        if not isinstance(row, AcquisitionRow):
            raise TypeError(f"expected AcquisitionRow, got {type(row).__name__}")
        item_id, rank = int(row.item_id), int(row.rank)
        if item_id < 0 or rank < 0:
            raise ValueError(f"item {row.item_id}: item_id and rank must be non-negative")
        if not isinstance(row.source_id, str):
            raise ValueError(f"item {item_id}: source_id must be a string")
        scores = [_real(getattr(row, name), f"item {item_id}: {name}") for name in _SCORE_COLUMNS]
        predicted = None if row.predicted_class is None else int(row.predicted_class)
        probabilities = None if row.probabilities is None else \
            _json_numbers(list(row.probabilities), f"item {item_id}: probabilities")
        extra = _json_numbers(dict(row.extra), f"item {item_id}: extra")
        return (item_id, row.source_id, rank, *scores, predicted, probabilities, extra)

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
                                     f"one call: {self._describe(before)} and {self._describe(annotation)}")
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
                        f"ledger {self.path}: item {item} is already annotated as {self._describe(recorded[item])}; "
                        f"the new answer {self._describe(annotation)} differs and an expert label is never "
                        f"overwritten")
            new = [a for item, a in answers.items() if item not in recorded]
            stamp = utc_now()
            db.executemany(
                "INSERT INTO annotations (item_id, source_id, label, label_name, roi_kind, roi_boxes, roi_mask, "
                "roi_height, roi_width, annotator, annotated_at, first_arm_id, recorded_at, session_id) "
                "VALUES (" + ", ".join("?" * 14) + ")",
                [(a.item_id, acquired[a.item_id], a.label, a.label_name, *self._roi_columns(a), a.annotator, a.time,
                  arm_id, stamp, self._session) for a in new])

    @staticmethod
    def _describe(annotation: Annotation) -> str:
        roi = "no ROI" if annotation.roi is None else (
            f"boxes {annotation.roi.to_json()}" if isinstance(annotation.roi, BoxRoi) else
            f"a {annotation.roi.height}×{annotation.roi.width} mask")
        return (f"label {annotation.label} ({annotation.label_name!r}), {roi}, by {annotation.annotator!r} "
                f"at {annotation.time}")

    @staticmethod
    def _roi_columns(annotation: Annotation) -> tuple[Any, ...]:
        roi = annotation.roi
        if roi is None:
            return (None, None, None, None, None)
        if isinstance(roi, BoxRoi):
            return ("boxes", roi.to_json(), None, None, None)
        return ("mask", None, roi.packed, roi.height, roi.width)

    _ANNOTATION_COLUMNS = "item_id, label, label_name, roi_kind, roi_boxes, roi_mask, roi_height, roi_width, " \
                          "annotator, annotated_at"

    @staticmethod
    def _annotation_from_row(row: Sequence[Any]) -> Annotation:
        item_id, label, label_name, kind, boxes, mask, height, width, annotator, time = row
        roi: BoxRoi | MaskRoi | None = None
        if kind == "boxes":
            roi = BoxRoi.from_json(boxes)
        elif kind == "mask":
            roi = MaskRoi(bytes(mask), int(height), int(width))
        return Annotation(int(item_id), int(label), label_name, roi, annotator, time)

    def _annotations_of(self, db: sqlite3.Connection, items: Sequence[int]) -> dict[int, Annotation]:
        found: dict[int, Annotation] = {}
        for start in range(0, len(items), 500):
            part = list(items[start:start + 500])
            sql = f"SELECT {self._ANNOTATION_COLUMNS} FROM annotations WHERE item_id IN ({', '.join('?' * len(part))})"
            for row in db.execute(sql, part):
                found[int(row[0])] = self._annotation_from_row(row)
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
        return [self._annotation_from_row(row) for row in self._query(
            f"SELECT {columns} FROM acquisitions a JOIN annotations n ON n.item_id = a.item_id "
            "WHERE a.arm_id = ? ORDER BY a.round, a.rank", (arm_id,))]

    def annotation(self, item_id: int) -> Annotation | None:
        """The item's annotation, whichever arm asked for it, or None."""
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
                "acquisitions": [self._export_acquisition(record) for record in self.acquisitions(arm)],
                "rounds": [{"round": r.round, "labels": r.labels, "model_version": r.model_version,
                            "metrics": {k: None if math.isnan(v) else v for k, v in r.metrics.items()}}
                           for r in self.rounds(arm)],
                "pending": self.pending(arm),
            })
        columns = self._ANNOTATION_COLUMNS
        annotations = [self._annotation_from_row(row) for row in
                       self._query(f"SELECT {columns} FROM annotations ORDER BY item_id")]
        return {
            "format": meta["format"],
            "schema_version": int(meta["schema_version"]),
            "run_config": json.loads(meta["run_config"]),
            "arms": arms,
            "annotations": [{"item_id": a.item_id, "label": a.label, "label_name": a.label_name,
                             "roi": roi_to_json(a.roi), "annotator": a.annotator} for a in annotations],
        }

    @staticmethod
    def _export_acquisition(record: AcquisitionRecord) -> dict[str, Any]:
        row = record.row
        clean = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v  # noqa: E731
        return {
            "round": record.round, "item_id": row.item_id, "source_id": row.source_id, "rank": row.rank,
            **{name: clean(getattr(row, name)) for name in _SCORE_COLUMNS},
            "predicted_class": row.predicted_class,
            "probabilities": None if row.probabilities is None else [clean(p) for p in row.probabilities],
            "extra": {k: clean(v) for k, v in sorted(row.extra.items())},
            "model_version": record.model_version,
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
            self._db.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # a standalone file: no -wal beside it
        finally:
            target.close()
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
        _fsync_dir(destination.parent)
