"""Where an ingest writes, so that a killed ``xal ingest`` never leaves a half-written pool.

Before this, a new pool was written in place: a kill (or an abort) left ``POOL/`` with chunks but
no manifest, which no reader could open and every rerun refused as "exists and is not empty".

* **New pool: staged, then renamed.** The pool is built in the hidden sibling
  ``.NAME.ingest-partial/`` and renamed to ``NAME`` once its manifest is written. Renaming a folder
  is atomic within one filesystem, so ``NAME`` is either absent or complete. Rerunning the same
  command after a kill deletes the abandoned staging folder and starts over (restart in place: the
  killed run's work is lost; ingest a very large dataset in parts with ``--append`` to bound it).
  An ingest that fails or is interrupted (Ctrl-C) deletes its staging folder itself.
* **Append: in place, committed by the manifest.** Rows are only added past the manifest's
  ``count``; zarr writes every file through a temporary name and a rename, so a chunk file is
  always whole; the manifest, replaced last and atomically, is the commit point. A killed append
  therefore leaves the previous pool as it was (readers go by the manifest's count), and the rerun
  appends again over the uncommitted rows.
* **One writer at a time.** An exclusive ``flock`` on ``.NAME.ingest-lock`` next to the pool is
  held for the whole ingest: a second ingest into the same pool fails at once, instead of
  interleaving rows or deleting a live staging folder. The lock file (empty) stays behind; the
  kernel drops the lock when its holder exits, however it exits.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IngestTarget", "ingest_target"]


@dataclass(frozen=True)
class IngestTarget:
    path: Path  # where to write now (the staging folder, or the pool itself on append)
    final: Path  # where the pool is once the ingest has finished
    discarded: bool  # an interrupted ingest's staging folder was found and deleted


@contextmanager
def ingest_target(out: str | Path, *, append: bool) -> Iterator[IngestTarget]:
    """Lock the pool at ``out`` and yield where to write it; a new pool is moved into place on exit.

    Raises ``ValueError`` when another ingest holds the pool, when a new pool's folder already has
    content, or when an append finds no pool.
    """
    final = Path(out).absolute()
    if append:
        if not (final / "manifest.json").is_file():
            raise ValueError(f"{out}: cannot append, no pool there (missing manifest.json)")
        with _exclusive(final.parent / f".{final.name}.ingest-lock", out):
            yield IngestTarget(final, final, False)
        return
    _require_empty(final, out)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / f".{final.name}.ingest-lock", out):
        staging = final.parent / f".{final.name}.ingest-partial"
        discarded = staging.exists()
        if discarded:
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            yield IngestTarget(staging, final, discarded)
            _require_empty(final, out)
            staging.rename(final)  # POSIX: atomic; replaces an empty folder the user made beforehand
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _require_empty(final: Path, out: str | Path) -> None:
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ValueError(f"{out}: exists and is not empty; use --append or choose a new --out")


@contextmanager
def _exclusive(lock: Path, out: str | Path) -> Iterator[None]:
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out}: another xal ingest is writing this pool right now (it holds {lock.name}); "
                             "wait for it to finish") from None
        yield  # closing the handle releases the lock
