"""The ledger as a file: the writer's lock, creating a complete empty ledger, and the read-only
inspection that refuses anything that is not a sound ledger of this run (never modifying it)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..annotations import utc_now
from .records import LedgerError
from .schema import _SCHEMA, _SQLITE_MAGIC, _TABLES, APPLICATION_ID, FORMAT, SCHEMA_VERSION

__all__ = ["create_file", "inspect_file", "release_lock", "take_lock"]


def _xal_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("xal-ml")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


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


def take_lock(path: Path) -> int | None:
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


def release_lock(descriptor: int | None) -> None:
    if descriptor is not None:
        os.close(descriptor)  # closing releases the flock


def create_file(path: Path, run_config: dict[str, Any]) -> None:
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


def inspect_file(path: Path, run_config: dict[str, Any] | None) -> None:
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
