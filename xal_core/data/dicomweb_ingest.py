"""``xal ingest dicomweb+URL``: a PACS's instances → a pool store, resumable after a kill.

Three phases, so that a network failure never costs a decoded item and a decoding failure never
costs the ingest:

1. **List** (QIDO-RS): the instances of ``--study`` UIDs or of a ``--query``, sorted by UID, frozen
   in ``.POOL.dicomweb-partial/listing.json`` next to the pool. A rerun of the same command (same
   URL, studies, query, labels file, classes) reuses that listing, so the instance set cannot shift
   between a killed run and its resumption.
2. **Retrieve** (WADO-RS, ``workers`` threads): each instance into
   ``.POOL.dicomweb-partial/instances/SOP.dcm`` (temporary name, then rename: a file there is
   whole). A rerun fetches only the missing ones. Transient errors are retried with backoff
   (``dicomweb.DicomWebConnection``); when the server stays away the ingest stops with a message
   saying how many instances are safe on disk — no pool has been written yet.
3. **Write** the pool from those files with the file ingest (``ingest.ingest``: staged and renamed,
   or an append committed by its manifest; decoding failures are report lines). Then the partial
   folder is deleted.

So a killed ingest, rerun with the same command, finishes the pool with every instance exactly
once: the listing is fixed, downloads are kept, and the pool write restarts from the local files
(``PoolWriter`` also refuses a duplicate id). One ingest at a time per pool
(``.POOL.dicomweb-lock``, ``flock``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .dicomweb import DicomWebConnection, DicomWebDataset, DicomWebError, InstanceCache, InstanceRef, read_labels
from .guards import DEFAULT_MAX_PIXELS
from .ingest import IngestSummary, ingest

__all__ = ["DicomWebIngest", "ingest_dicomweb", "partial_folder"]


@dataclass(frozen=True)
class DicomWebIngest:
    summary: IngestSummary | None  # None: the pool was already complete (an earlier run committed it)
    listed: int
    retrieved: int  # fetched by this run (the rest came from an interrupted run's downloads)
    resumed: bool
    dataset_folder: Path | None = None


def partial_folder(out: str | Path) -> Path:
    final = Path(out).absolute()
    return final.parent / f".{final.name}.dicomweb-partial"


def ingest_dicomweb(connection: DicomWebConnection, out: str | Path, *, size: tuple[int, int],
                    studies: Sequence[str] = (), query: str | None = None, labels: str | Path | None = None,
                    classes: Sequence[str] | None = None, max_pixels: int | None = None, chunk: int = 1024,
                    max_boxes: int = 64, append: bool = False, workers: int = 4,
                    on_phase: Callable[[str, int, int], None] | None = None,
                    dataset_out: str | Path | None = None, test_fraction: float = 0.2,
                    credentials_file: str | Path | None = None, ca_bundle: str | Path | None = None) -> DicomWebIngest:
    """Ingest the instances a DICOMweb service lists (module doc). ``on_phase(phase, done, total)``
    reports progress of ``"retrieve"`` and ``"write"``."""
    if bool(studies) == bool(query):
        raise ValueError("give the instances to ingest with --study UID … or with --query \"KEY=VALUE&…\" (one of them)")
    final = Path(out).absolute()
    label_table = read_labels(labels, classes) if labels is not None else None
    progress = on_phase or (lambda phase, done, total: None)
    key = _listing_key(connection.url, studies, query, labels, classes)
    partial = partial_folder(final)
    with _exclusive(final.parent / f".{final.name}.dicomweb-lock", out):
        if not append and final.exists() and any(final.iterdir()):
            if _committed(final, key):  # an earlier run committed the pool, then died before tidying up
                shutil.rmtree(partial, ignore_errors=True)
                return DicomWebIngest(None, 0, 0, True)
            raise ValueError(f"{out}: exists and is not empty; use --append or choose a new --out")
        refs, resumed = _listing(connection, partial, key, studies, query)
        cache = InstanceCache(partial / "instances")
        missing = [ref for ref in refs if not cache.has(ref)]
        fetched = _retrieve(connection, cache, missing, workers, len(refs), progress)
        selection = {"studies": sorted(studies), "query": query, "listing": key}
        dataset = DicomWebDataset(connection, refs, size, cache=cache, labels=label_table, classes=classes,
                                  max_pixels=max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS,
                                  selection=selection)
        summary = ingest(dataset, final, chunk=chunk, max_boxes=max_boxes, append=append, workers=workers,
                         on_progress=lambda done, skipped: progress("write", done, len(dataset)))
        folder = None
        if dataset_out is not None:
            folder = _dataset_folder(dataset, summary.report, dataset_out, test_fraction, credentials_file, ca_bundle)
        shutil.rmtree(partial, ignore_errors=True)
    return DicomWebIngest(summary, len(refs), fetched, resumed, folder)


def _listing_key(url: str, studies: Sequence[str], query: str | None, labels: str | Path | None,
                 classes: Sequence[str] | None) -> str:
    try:
        labels_digest = hashlib.sha256(Path(labels).read_bytes()).hexdigest() if labels is not None else None
    except OSError as error:
        raise ValueError(f"--labels {labels}: cannot be read ({error.strerror or error})") from None
    text = json.dumps({"url": url, "studies": sorted(studies), "query": query, "labels": labels_digest,
                       "classes": list(classes or ())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _committed(final: Path, key: str) -> bool:
    try:
        manifest = json.loads((final / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return any(isinstance(s, dict) and s.get("options", {}).get("listing") == key for s in manifest.get("sources", []))


def _listing(connection: DicomWebConnection, partial: Path, key: str, studies: Sequence[str],
             query: str | None) -> tuple[list[InstanceRef], bool]:
    path = partial / "listing.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return [InstanceRef(*row) for row in stored["instances"]], True
        except (OSError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(partial)  # another command's (or a damaged) listing: start this one afresh
    refs = connection.search(studies=studies, query=query)
    partial.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"key": key, "url": connection.url,
                                     "instances": [[r.study, r.series, r.sop] for r in refs]}))
    temporary.replace(path)
    return refs, False


def _retrieve(connection: DicomWebConnection, cache: InstanceCache, missing: list[InstanceRef], workers: int,
              total: int, progress: Callable[[str, int, int], None]) -> int:
    done = total - len(missing)
    progress("retrieve", done, total)
    if not missing:
        return 0

    def fetch(ref: InstanceRef) -> None:
        cache.put(ref, connection.retrieve(ref))

    fetched = 0

    def failed(error: DicomWebError) -> DicomWebError:
        safe = sum(1 for _ in cache.folder.glob("*.dcm"))
        return DicomWebError(f"{error}. {safe} of {total} instances are retrieved and kept; no pool was written. "
                             "Rerun the same command to resume")

    if workers <= 1:
        for ref in missing:
            try:
                fetch(ref)
            except DicomWebError as error:
                raise failed(error) from None
            fetched += 1
            progress("retrieve", done + fetched, total)
        return fetched
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wado") as pool:
        futures = [pool.submit(fetch, ref) for ref in missing]
        try:
            for future in as_completed(futures):
                future.result()
                fetched += 1
                progress("retrieve", done + fetched, total)
        except DicomWebError as error:
            pool.shutdown(wait=True, cancel_futures=True)
            raise failed(error) from None
    return fetched


def _dataset_folder(dataset: DicomWebDataset, report: Path, out: str | Path, test_fraction: float,
                    credentials_file: str | Path | None, ca_bundle: str | Path | None) -> Path:
    """The generic folder for ``xal run --dataset generic`` (docs/data.md, "DICOMweb pools"): the
    labelled instances that decoded (report lines are left out), split from ``--labels``'s ``split``
    column or by study: a study goes to ``test`` when its hash falls below ``test_fraction``."""
    from .dicomweb import write_dataset_folder

    if dataset.labels is None:
        raise ValueError("--dataset-out needs --labels: a run evaluates on labelled test items")
    skipped = {line.split("\t", 1)[0] for line in report.read_text(encoding="utf-8").splitlines() if line}
    rows = []
    for record in dataset.records:
        if record.ref.id in skipped:
            continue
        entry = dataset.labels.lookup(record.ref)
        split = entry[2] if entry is not None and entry[2] else _split_of(record.ref.study, test_fraction)
        roi = "" if record.boxes is None else json.dumps(record.boxes.tolist(), separators=(",", ":"))
        rows.append((record.ref.id, dataset.classes[record.label], roi, split))
    return write_dataset_folder(out, dataset.connection.url, rows, credentials_file=credentials_file,
                                ca_bundle=ca_bundle)


def _split_of(study: str, test_fraction: float) -> str:
    digest = hashlib.sha256(study.encode()).digest()  # the rule of xal run's own test split
    return "test" if int.from_bytes(digest[:8], "little") / 2**64 < test_fraction else "pool"


@contextmanager
def _exclusive(lock: Path, out: str | Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out}: another xal ingest is reading this DICOMweb source into the pool right now "
                             f"(it holds {lock.name}); wait for it to finish") from None
        yield
