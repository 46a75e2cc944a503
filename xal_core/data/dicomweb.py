"""DICOMweb sources: search (QIDO-RS), retrieve (WADO-RS) and store (STOW-RS) on a PACS.

A hospital's images live in its PACS, not in a folder. This module reaches one over DICOMweb with
``dicomweb-client`` and hands the instances to the same decoder as the file adapters
(``dicom.decode_dicom``: Modality LUT, VOI LUT, ``MONOCHROME1`` inverted, any bit depth), so an
instance read over the network and the same instance read from its file give the same pixels.

* **Addresses.** ``dicomweb+http://HOST:PORT/dicom-web`` (or ``dicomweb+https://…``): the service
  root; the ``dicomweb+`` prefix says which kind of source ``xal ingest`` was given.
* **Credentials** never on the command line (it is visible to every user of the machine in
  ``ps``): a file (``--credentials-file``) or the environment variable ``XAL_DICOMWEB_CREDENTIALS``
  holds either ``user:password`` (HTTP Basic) or a bearer token (anything without a colon, or
  ``Bearer TOKEN``). TLS certificates are verified (``--ca-bundle`` for a hospital's own CA);
  there is no switch to turn verification off.
* **Transient failures are retried** with exponential backoff and jitter (HTTP 5xx, 408, 429, a
  reset or refused connection, a timeout); anything else fails at once with what the server said
  (401/403: the credentials; 404: what was not found). :class:`DicomWebError` is a ``ValueError``,
  so the command line prints it as one line.
* **Item ids** are ``STUDY_UID/SERIES_UID/SOP_UID``: the item's DICOM identity, so an id names the
  instance to fetch again, and everything before the first ``/`` (the study) is the group that
  ``xal run`` keeps on one side of a split.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch

from .dicom import decode_dicom, parse_dicom
from .guards import DEFAULT_MAX_PIXELS, pixel_limit
from .item import IndexedDataset, Item, Skip, check_boxes, resize_image, scale_boxes

__all__ = ["PREFIX", "CREDENTIALS_ENV", "DicomWebError", "InstanceRef", "DicomWebConnection", "InstanceCache",
           "DicomWebDataset", "DicomWebImages", "LabelTable", "is_dicomweb", "write_dataset_folder", "service_url", "read_credentials", "read_labels"]

PREFIX = "dicomweb+"
CREDENTIALS_ENV = "XAL_DICOMWEB_CREDENTIALS"
_UID_CHARS = set("0123456789.")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class DicomWebError(ValueError):
    """The DICOMweb server could not be used (unreachable, refused, not found): one clear line."""


def is_dicomweb(source: str) -> bool:
    return source.startswith(PREFIX)


def service_url(source: str) -> str:
    """``dicomweb+http://h:p/dicom-web`` → ``http://h:p/dicom-web`` (checked: http or https, a host)."""
    url = source[len(PREFIX):] if is_dicomweb(source) else source
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{source}: expected dicomweb+http://HOST:PORT/PATH or dicomweb+https://…")
    if parts.username or parts.password:
        raise ValueError(f"{source}: put no credentials in the address (they would show in `ps`); use "
                         f"--credentials-file or the {CREDENTIALS_ENV} environment variable")
    return url.rstrip("/")


def check_uid(uid: str, what: str) -> str:
    uid = uid.strip()
    if not uid or len(uid) > 64 or not set(uid) <= _UID_CHARS or uid.startswith(".") or ".." in uid:
        raise ValueError(f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


@dataclass(frozen=True, order=True)
class InstanceRef:
    """One instance's DICOM identity."""

    study: str
    series: str
    sop: str

    @property
    def id(self) -> str:
        return f"{self.study}/{self.series}/{self.sop}"

    @classmethod
    def from_id(cls, text: str) -> InstanceRef:
        parts = text.split("/")
        if len(parts) != 3:
            raise ValueError(f"{text!r}: expected STUDY_UID/SERIES_UID/SOP_UID")
        return cls(*(check_uid(part, name) for part, name in zip(parts, ("study", "series", "SOP instance"),
                                                                   strict=True)))


# ---------------------------------------------------------------------------------- credentials
def read_credentials(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> dict[str, str]:
    """HTTP headers for the credentials in ``path`` or ``$XAL_DICOMWEB_CREDENTIALS`` (none: ``{}``).

    ``user:password`` → Basic; ``Bearer TOKEN`` or a bare token (no colon) → Bearer. Only the first
    non-empty line counts, surrounding whitespace dropped. The secret never enters an error message.
    """
    environ = os.environ if environ is None else environ
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"--credentials-file {path}: cannot be read ({error.strerror or error})") from None
        where = f"--credentials-file {path}"
    elif environ.get(CREDENTIALS_ENV):
        text, where = environ[CREDENTIALS_ENV], f"${CREDENTIALS_ENV}"
    else:
        return {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{where}: empty (expected user:password or a bearer token)")
    secret = lines[0]
    if secret.lower().startswith("bearer "):
        return {"Authorization": f"Bearer {secret[7:].strip()}"}
    if ":" in secret:
        import base64

        return {"Authorization": "Basic " + base64.b64encode(secret.encode("utf-8")).decode("ascii")}
    return {"Authorization": f"Bearer {secret}"}


# ---------------------------------------------------------------------------------- connection
class DicomWebConnection:
    """A DICOMweb service: QIDO-RS search, WADO-RS retrieve, STOW-RS store, each retried on
    transient failures (module doc). Thread-safe for concurrent retrieves (one ``requests`` session
    per thread)."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, ca_bundle: str | Path | None = None,
                 retries: int = 5, backoff: float = 0.5, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = service_url(url)
        self._headers = dict(headers or {})
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise ValueError(f"--ca-bundle {ca_bundle}: no such file")
        self._verify: str | bool = str(ca_bundle) if ca_bundle is not None else True
        self.retries, self.backoff, self.timeout = max(0, int(retries)), float(backoff), float(timeout)
        self._sleep = sleep
        self._local = threading.local()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import requests
            from dicomweb_client.api import DICOMwebClient

            session = requests.Session()
            session.verify = self._verify
            session.headers.update(self._headers)
            client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
            client.set_http_retry_params(retry=False)  # one retry policy: ours (_call)
            self._local.client = client
        return client

    def _call(self, what: str, action: Callable[[Any], Any]) -> Any:
        """Run ``action(client)``, retrying transient failures; raise :class:`DicomWebError` otherwise."""
        import requests

        attempt = 0
        while True:
            try:
                return action(self._client())
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else None
                if status in (401, 403):
                    raise DicomWebError(f"{self.url}: {what}: the server refused the credentials (HTTP {status}); "
                                        f"give them with --credentials-file or ${CREDENTIALS_ENV}") from None
                if status not in _TRANSIENT_STATUS or attempt >= self.retries:
                    detail = _reason(error.response)
                    raise DicomWebError(f"{self.url}: {what}: HTTP {status}{detail}" +
                                        (f" after {attempt + 1} attempts" if attempt else "")) from None
                problem = f"HTTP {status}"
            except requests.exceptions.SSLError as error:
                raise DicomWebError(f"{self.url}: {what}: TLS verification failed ({_short(error)}); give the "
                                    "hospital's CA certificate with --ca-bundle") from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    ConnectionError) as error:
                if attempt >= self.retries:
                    raise DicomWebError(f"{self.url}: {what}: the server cannot be reached after {attempt + 1} "
                                        f"attempts ({_short(error)})") from None
                problem = type(error).__name__
            delay = self.backoff * (2 ** attempt) * (1 + random.random() / 2)
            attempt += 1
            del problem  # what failed is in the final message when retries run out
            self._sleep(delay)

    # -- QIDO-RS
    def search(self, *, studies: Sequence[str] = (), query: str | None = None) -> list[InstanceRef]:
        """Every instance of the given studies, or matching ``query`` (``Modality=CR&StudyDate=…``),
        sorted by UID; a study with no instance raises (it does not exist on this server)."""
        fields = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
        found: set[InstanceRef] = set()
        if studies:
            for study in studies:
                check_uid(study, "--study")
                rows = self._call(f"search study {study}", lambda c, s=study: c.search_for_instances(
                    study_instance_uid=s, fields=fields, get_remaining=True))
                refs = [ref for ref in map(_ref_of, rows or []) if ref is not None]
                if not refs:
                    raise DicomWebError(f"{self.url}: study {study} does not exist on this server (QIDO-RS found "
                                        "no instance of it)")
                found.update(refs)
        else:
            filters = dict(parse_qsl(query or "", keep_blank_values=False, strict_parsing=bool(query)))
            rows = self._call("search instances", lambda c: c.search_for_instances(
                search_filters=filters or None, fields=fields, get_remaining=True))
            found.update(ref for ref in map(_ref_of, rows or []) if ref is not None)
            if not found:
                raise DicomWebError(f"{self.url}: no instance matches {query or 'the whole archive'!r}")
        return sorted(found)

    # -- WADO-RS
    def retrieve(self, ref: InstanceRef) -> bytes:
        """The instance's bytes, in the transfer syntax it is stored in (``transfer-syntax=*``)."""
        def fetch(client: Any) -> bytes:
            from dicomweb_client.web import _Transaction  # the client's own URL builder

            url = client._get_instances_url(_Transaction.RETRIEVE, ref.study, ref.series, ref.sop)
            accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
            response = client._http_get(url, headers={"Accept": accept})
            if response.headers.get("Content-Type", "").startswith("application/dicom"):
                return bytes(response.content)  # a single part sent bare (tolerated, as dicomweb-client does)
            parts = list(client._decode_multipart_message(response, stream=False))
            if len(parts) != 1:
                raise DicomWebError(f"{self.url}: retrieve {ref.id}: expected one instance, got {len(parts)}")
            return bytes(parts[0])

        return self._call(f"retrieve {ref.id}", fetch)

    # -- STOW-RS
    def store(self, datasets: Sequence[Any]) -> Any:
        return self._call(f"store {len(datasets)} instance(s)", lambda c: c.store_instances(list(datasets)))

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "ca_bundle": None if self._verify is True else self._verify}


def _ref_of(row: dict[str, Any]) -> InstanceRef | None:
    def value(tag: str) -> str | None:
        entry = row.get(tag) or {}
        values = entry.get("Value") or []
        return str(values[0]) if values else None

    uids = value("0020000D"), value("0020000E"), value("00080018")
    return None if None in uids else InstanceRef(*uids)  # type: ignore[arg-type]


def _reason(response: Any) -> str:
    if response is None:
        return ""
    text = (response.text or "").strip().replace("\n", " ")
    return f" ({text[:200]})" if text else ""


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:200] + "…"


# ---------------------------------------------------------------------------------- on-disk cache
class InstanceCache:
    """Instances kept on disk by SOP UID, written atomically (temporary name, then rename).

    ``max_bytes``: when a store takes the folder above it, the least recently used files go first
    (``None``: unbounded — the resume folder of an ingest, emptied when it commits).
    """

    def __init__(self, folder: str | Path, *, max_bytes: int | None = None) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path(self, ref: InstanceRef) -> Path:
        return self.folder / f"{ref.sop}.dcm"

    def get(self, ref: InstanceRef) -> bytes | None:
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        return data

    def has(self, ref: InstanceRef) -> bool:
        return self.path(ref).is_file()

    def put(self, ref: InstanceRef, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(ref)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
        if self.max_bytes is not None:
            self._trim(keep=path)

    def _trim(self, keep: Path) -> None:
        with self._lock:
            files = []
            for entry in self.folder.glob("*.dcm"):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                files.append((stat.st_mtime, stat.st_size, entry))
            total = sum(size for _, size, _ in files)
            for _, size, entry in sorted(files):
                if total <= self.max_bytes:  # type: ignore[operator]
                    break
                if entry == keep:
                    continue
                entry.unlink(missing_ok=True)
                total -= size

    def fetch(self, connection: DicomWebConnection, ref: InstanceRef) -> bytes:
        data = self.get(ref)
        if data is None:
            data = connection.retrieve(ref)
            self.put(ref, data)
        return data


# ---------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelTable:
    """``--labels CSV``: columns ``uid`` (a SOP Instance UID, or a Study Instance UID for every image
    of the study), ``label`` (class name), optional ``roi`` (JSON boxes in the instance's pixels,
    ``[]`` = known empty) and ``split`` (``pool``/``val``/``test``)."""

    classes: tuple[str, ...]
    rows: dict[str, tuple[int, np.ndarray | None, str | None]]  # uid → (label, boxes, split)

    def lookup(self, ref: InstanceRef) -> tuple[int, np.ndarray | None, str | None] | None:
        return self.rows.get(ref.sop) or self.rows.get(ref.study)


def read_labels(path: str | Path, classes: Sequence[str] | None = None) -> LabelTable:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"uid", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"--labels {path}: missing columns {sorted(missing)} (expected uid,label[,roi][,split])")
            rows = list(enumerate(reader, start=2))
    except OSError as error:
        raise ValueError(f"--labels {path}: cannot be read ({error.strerror or error})") from None
    names = tuple(classes) if classes else tuple(sorted({(r["label"] or "").strip() for _, r in rows} - {""}))
    table: dict[str, tuple[int, np.ndarray | None, str | None]] = {}
    for line, row in rows:
        where = f"--labels {path} line {line}"
        uid = check_uid(row["uid"] or "", f"{where}: uid")
        label = (row["label"] or "").strip()
        if label not in names:
            raise ValueError(f"{where}: label {label!r} is not one of the classes {list(names)}")
        roi_text = (row.get("roi") or "").strip()
        boxes = None
        if roi_text:
            try:
                boxes = np.asarray(json.loads(roi_text), dtype=np.float64).reshape(-1, 4)
            except (ValueError, TypeError):
                raise ValueError(f"{where}: unparseable roi {roi_text!r} (expected [[x_min, y_min, x_max, y_max], …] "
                                 "in the instance's pixels)") from None
        split = (row.get("split") or "").strip() or None
        if split not in (None, "pool", "val", "test"):
            raise ValueError(f"{where}: split {split!r} (expected pool, val or test)")
        if uid in table:
            raise ValueError(f"{where}: uid {uid} is listed twice")
        table[uid] = (names.index(label), boxes, split)
    return LabelTable(names, table)


# ---------------------------------------------------------------------------------- the adapter
@dataclass(frozen=True)
class _Record:
    ref: InstanceRef
    label: int
    boxes: np.ndarray | None  # in the instance's pixels; None = unknown ROI


class DicomWebDataset(IndexedDataset):
    """Instances of a DICOMweb service as a dataset (``kind = "dicomweb"``).

    ``records`` come from a QIDO-RS listing (made by the caller: :meth:`DicomWebConnection.search`);
    pixels are fetched through ``cache`` (an :class:`InstanceCache`: an ingest's resume folder, or
    the annotator's bounded cache) and decoded like a file. Labels come from a :class:`LabelTable`;
    without one every item is unlabelled (label 0 of ``classes`` as a placeholder, recorded in the
    manifest as ``"labels": "none"``: such a pool is for experts to label, never for the simulated
    oracle). Instances the table does not list are left out (a report line each) when a table is
    given.
    """

    kind = "dicomweb"

    def __init__(self, connection: DicomWebConnection, refs: Iterable[InstanceRef], size: tuple[int, int], *,
                 cache: InstanceCache, labels: LabelTable | None = None, classes: Sequence[str] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, selection: dict[str, Any] | None = None) -> None:
        if labels is None and not classes:
            raise ValueError("a DICOMweb source carries no labels: give --labels CSV (uid,label[,roi][,split]) or "
                             "--classes a,b,… for an unlabelled pool")
        names = labels.classes if labels is not None else tuple(classes or ())
        self.max_pixels = pixel_limit(max_pixels)
        super().__init__(size, names, "boxes",
                         {"url": connection.url, **(selection or {}), "labels": "csv" if labels else "none",
                          "max_pixels": self.max_pixels})
        self.connection, self.cache, self.labels = connection, cache, labels
        for ref in refs:
            if labels is None:
                self.records.append(_Record(ref, 0, None))
                continue
            entry = labels.lookup(ref)
            if entry is None:
                self.skipped.append(Skip(ref.id, "no label for this instance (nor its study) in --labels"))
                continue
            self.records.append(_Record(ref, entry[0], entry[1]))

    def record_id(self, record: _Record) -> str:
        return record.ref.id

    def decoded(self, record: _Record) -> Any:
        data = self.cache.fetch(self.connection, record.ref)
        return decode_dicom(parse_dicom(data, record.ref.id), record.ref.id, max_pixels=self.max_pixels,
                            multiframe="refuse")

    def native_pixels(self, record: _Record) -> np.ndarray:
        return self.decoded(record).pixels

    def load(self, record: _Record) -> Item:
        decoded = self.decoded(record)
        shape = decoded.shape
        roi: torch.Tensor | None = None
        if record.boxes is not None:
            roi = scale_boxes(check_boxes(record.boxes, shape, record.ref.id), shape, self.size)
        meta = {"study_uid": record.ref.study, "series_uid": record.ref.series, "sop_uid": record.ref.sop,
                "source_shape": list(shape)}
        return Item(record.ref.id, resize_image(decoded.pixels, self.size), roi, record.label, meta)


def fetch_source(connection: DicomWebConnection, cache: InstanceCache, source_id: str, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The instance behind ``source_id`` (``STUDY/SERIES/SOP``) at its native resolution, decoded."""
    ref = InstanceRef.from_id(source_id)
    data = cache.fetch(connection, ref)
    return decode_dicom(parse_dicom(data, ref.id), ref.id, max_pixels=max_pixels, multiframe="refuse").pixels


# ---------------------------------------------------------------------------------- generic folders
FOLDER_CONFIG = "dicomweb.json"
REFERENCE = "dicomweb:"


class DicomWebImages:
    """The DICOMweb service a generic folder's ``labels.csv`` refers to (``image`` values
    ``dicomweb:STUDY/SERIES/SOP``), from the folder's ``dicomweb.json``::

        {"url": "http://127.0.0.1:8042/dicom-web", "ca_bundle": null,
         "credentials_file": "/etc/xal/pacs.credentials"}

    The file names where the credentials are (or nothing: ``$XAL_DICOMWEB_CREDENTIALS``), never the
    secret. Instances are fetched on demand; :meth:`use_cache` adds a bounded on-disk cache (the
    annotator's, under the run folder).
    """

    def __init__(self, config: dict[str, Any], where: Path) -> None:
        try:
            url = str(config["url"])
        except (KeyError, TypeError):
            raise ValueError(f"{where}: expected a JSON object with \"url\"") from None
        credentials = config.get("credentials_file")
        self.connection = DicomWebConnection(url, headers=read_credentials(credentials),
                                             ca_bundle=config.get("ca_bundle"))
        self.cache: InstanceCache | None = None

    @classmethod
    def of_folder(cls, root: Path) -> DicomWebImages | None:
        path = Path(root) / FOLDER_CONFIG
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable ({error})") from None
        return cls(config, path)

    def use_cache(self, folder: str | Path, max_bytes: int) -> None:
        self.cache = InstanceCache(folder, max_bytes=max_bytes)

    def pixels(self, source_id: str, max_pixels: int) -> np.ndarray:
        ref = InstanceRef.from_id(source_id)
        data = self.cache.fetch(self.connection, ref) if self.cache is not None else self.connection.retrieve(ref)
        return decode_dicom(parse_dicom(data, ref.id), ref.id, max_pixels=max_pixels, multiframe="refuse").pixels


def write_dataset_folder(folder: str | Path, url: str, rows: Sequence[tuple[str, str, str, str]], *,
                         credentials_file: str | Path | None, ca_bundle: str | Path | None) -> Path:
    """Write a generic dataset folder naming DICOMweb instances: ``labels.csv`` (``image`` =
    ``dicomweb:STUDY/SERIES/SOP``, ``label``, ``roi``, ``split``) and ``dicomweb.json``; written
    aside and renamed into place. ``rows``: ``(item id, label name, roi JSON or "", split)``."""
    folder = Path(folder).absolute()
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder}: exists and is not empty")
    staging = folder.with_name(f".{folder.name}.partial")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    config = {"url": url, "ca_bundle": None if ca_bundle is None else str(Path(ca_bundle).absolute()),
              "credentials_file": None if credentials_file is None else str(Path(credentials_file).absolute())}
    (staging / FOLDER_CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    with (staging / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "roi", "split"])
        for identifier, label, roi, split in rows:
            writer.writerow([REFERENCE + identifier, label, roi, split])
    if folder.exists():
        folder.rmdir()
    staging.rename(folder)
    return folder
