"""Ingest: stream a dataset into a pool store, skipping bad items with a report line.

Why skip instead of stop: a real dataset of 100 000 DICOMs has a few truncated files and CSV rows
that point nowhere; losing a night's ingest to one of them is worse than leaving it out. Each
skipped item is one line ``path <TAB> reason`` in ``POOL/ingest_report.tsv`` and counts in the
summary, so nothing is lost silently.

Any exception while loading one item (a decoder's, a bug's, a ``MemoryError``) skips that item
alone: the reason names the exception, and the summary's count makes a systematic failure plain.

Items are loaded on a few threads (decompression and file reads release the GIL) while the
writer fills chunks in order, so the pool's row order is the dataset's order.

A killed ingest never leaves a half-written pool (``staging.py``): a new pool is built in a
staging folder and renamed into place at the end; an append is committed by the manifest. The
report lines of this run are kept apart until that commit, so a killed run adds none.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .item import Dataset, Item, ItemError, Skip
from .pool_store import DEFAULT_ROI_SOURCE, PoolWriter
from .staging import ingest_target

__all__ = ["IngestSummary", "ingest", "REPORT"]

REPORT = "ingest_report.tsv"
_SESSION_REPORT = ".ingest_report.session.tsv"  # this run's lines, until the commit


@dataclass(frozen=True)
class IngestSummary:
    written: int
    skipped: int
    total: int  # items in the pool after this ingest
    seconds: float
    report: Path
    discarded_partial: bool = False  # an interrupted earlier ingest's staging folder was deleted

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("inf")


def _load(dataset: Dataset, index: int) -> Item | Skip:
    try:
        return dataset[index]
    except ItemError as error:
        return Skip(error.path, error.reason)
    except Exception as error:  # one item's failure, of whatever kind, must not sink the rest
        return Skip(_where(dataset, index), f"unexpected {type(error).__name__}: {error}")


def _where(dataset: Dataset, index: int) -> str:
    """The file behind item ``index`` when the adapter's record names one, else ``item INDEX``."""
    records = getattr(dataset, "records", None)
    if records is not None and 0 <= index < len(records):
        for attribute in ("path", "image"):
            value = getattr(records[index], attribute, None)
            if value is not None:
                return str(value)
    return f"item {index}"


def _commit_report(folder: Path) -> None:
    """Append this run's report lines to ``REPORT`` atomically (copy, extend, rename)."""
    session, report = folder / _SESSION_REPORT, folder / REPORT
    combined = folder / f"{REPORT}.tmp"
    with combined.open("wb") as out:
        if report.exists():
            out.write(report.read_bytes())
        out.write(session.read_bytes())
    combined.replace(report)
    session.unlink()


def ingest(dataset: Dataset, out: str | Path, *, chunk: int = 1024, max_boxes: int = 64, append: bool = False,
           workers: int = 4, on_progress: Callable[[int, int], None] | None = None,
           roi_source: str = DEFAULT_ROI_SOURCE) -> IngestSummary:
    """Write every item of ``dataset`` into the pool at ``out``.

    Args:
        dataset: an adapter from :func:`xal_core.data.open_dataset`.
        out: the pool folder (new, or existing with ``append=True``).
        chunk: items per chunk (the unit of reading, writing and checksums).
        max_boxes: box slots per item in a box pool.
        workers: loader threads (1 = load in the calling thread).
        on_progress: called with ``(done, skipped)`` after each item (drives the progress bar).
        roi_source: what the scorer reads as each item's ROI (``pool_store.ROI_SOURCES``); the
            expert's ROIs go to the oracle's part of the pool whatever it is.
    """
    started = time.perf_counter()
    channels = int(getattr(dataset, "channels", 1))
    with ingest_target(out, append=append) as target:
        writer = PoolWriter(target.path, size=dataset.size, channels=channels, classes=dataset.classes,
                            roi_format=dataset.roi_format, source=dataset.describe(), chunk=chunk,
                            max_boxes=max_boxes, append=append, roi_source=roi_source)
        skips: list[Skip] = list(dataset.skipped)
        done = written = 0
        with (target.path / _SESSION_REPORT).open("w", encoding="utf-8") as lines:
            for skip in skips:
                lines.write(f"{skip.path}\t{skip.reason}\n")

            def record(result: Item | Skip) -> None:
                nonlocal done, written
                if isinstance(result, Skip):
                    skips.append(result)
                    lines.write(f"{result.path}\t{result.reason}\n")
                else:
                    try:
                        writer.add(result)
                        written += 1
                    except ValueError as error:
                        skips.append(Skip(result.id, str(error)))
                        lines.write(f"{result.id}\t{error}\n")
                done += 1
                if on_progress is not None:
                    on_progress(done, len(skips))

            if workers <= 1:
                for index in range(len(dataset)):
                    record(_load(dataset, index))
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
                    window: deque[Future[Item | Skip]] = deque()
                    for index in range(len(dataset)):
                        window.append(pool.submit(_load, dataset, index))
                        if len(window) >= 4 * workers:
                            record(window.popleft().result())
                    while window:
                        record(window.popleft().result())
        writer.skipped = len(skips)
        writer.flush()
        _commit_report(target.path)
        writer.close()  # the manifest: the commit point of an append
    return IngestSummary(written=written, skipped=len(skips), total=writer.count,
                         seconds=time.perf_counter() - started, report=target.final / REPORT,
                         discarded_partial=target.discarded)
