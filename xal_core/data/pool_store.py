"""The pool store: a chunked on-disk pool of preprocessed images, ROIs and ids (Zarr v3).

Why Zarr v3: chunked, compressed N-d arrays in plain files (or object storage) that any reader can
slice without loading the rest; appending is a resize; a chunk is the unit the scorer streams and
the unit a checksum covers. HDF5 would need one writer lock per file and does not shard across
object stores; WebDataset tars cannot be indexed by item.

Layout of ``POOL/``::

    manifest.json          format, source description, preprocessing, counts, per-chunk checksums
    scoring/               the Zarr group the scorer reads
        images   float16 [N, C, H, W]   chunk (n, C, H, W)   preprocessed, values in [0, 1]
        index    int64   [N]            the item's integer id (row number), used by TopK
        ids      uint8   [N, 256]       the source id, UTF-8, zero-padded
        roi_known bool   [N]            False = no ROI for the scorer (misalignment NaN)
        roi_packed uint8 [N, H, ⌈W/8⌉]  the ROI the scorer reads, bit-packed (NumPy packbits order)
        roi_boxes float32 [N, M, 4], roi_counts int32 [N]   only when that ROI comes as boxes
    oracle/                kept apart: only the oracle reveals these, item by item, once acquired
        labels   int32 [N]
        roi_known, roi_packed (+ roi_boxes, roi_counts)   the expert's ROI, same layout as above
    ingest_report.tsv      one line per skipped item: path <TAB> reason

What the scorer reads is the pool's *ROI source* (``manifest["roi_source"]``, one of
``ROI_SOURCES``): ``expert`` — the expert's ROI of every item, the oracle setting of the paper, which
no deployment has for unlabelled images (and a known-empty "no finding" ROI gives misalignment 1,
which leaks the label); ``anatomy`` — a prior mask that needs no expert (``Item.prior``: lung
fields, the brain); ``none`` — no ROI (uncertainty only). Whatever the source, the expert's ROIs go
to ``oracle/`` and nowhere else, so under ``anatomy`` or ``none`` no expert ROI of an unlabelled item
can reach a scorer (in process, the service or Ray: they all read ``scoring/``). Pools written before
``oracle/roi_*`` existed are ``expert`` pools, and their oracle reads ``scoring/``.

Every item has a packed mask (boxes are rasterised with the pixel-centre rule), so a scorer can
always consume masks; box pools also keep the boxes for the faster box path. ``float16`` halves
the pool on disk: images are normalised to [0, 1] before storing, where float16 resolves 1/2048.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from xal_core.scoring import Roi

from .item import Item

__all__ = ["CorruptChunk", "PoolStore", "PoolWriter", "PoolChunk", "FORMAT", "ID_BYTES", "ROI_SOURCES",
           "DEFAULT_ROI_SOURCE"]

FORMAT = "xal-pool/1"
ID_BYTES = 256
#: What the scorer reads as each unlabelled item's ROI (module docstring).
ROI_SOURCES = ("expert", "anatomy", "none")
DEFAULT_ROI_SOURCE = "expert"
_SCORING_ARRAYS = ("images", "index", "ids", "roi_known", "roi_packed")
_ROI_ARRAYS = ("roi_known", "roi_packed")
_BOX_ARRAYS = ("roi_boxes", "roi_counts")


@dataclass(frozen=True, eq=False)
class PoolChunk:
    """One chunk as the scorer consumes it (no labels)."""

    number: int
    index: torch.Tensor  # int64 [b]
    ids: list[str]
    images: torch.Tensor  # float32 [b, C, H, W]
    roi: Roi


def _id_digest(encoded_id: bytes) -> bytes:
    return hashlib.blake2b(encoded_id, digest_size=16).digest()


def _checksum(arrays: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _oracle_checksum(arrays: dict[str, np.ndarray]) -> str:
    """Of ``oracle/``: the labels, then the expert's ROI arrays by name (pools without them: labels
    alone, as they were written)."""
    return _checksum([arrays["labels"], *(arrays[name] for name in sorted(arrays) if name != "labels")])


class CorruptChunk(ValueError):
    """A pool chunk that cannot be trusted: its items (``rows``) are reported and skipped."""

    def __init__(self, number: int, rows: slice, reason: str) -> None:
        super().__init__(f"chunk {number}: {reason}")
        self.number = number
        self.rows = rows
        self.reason = reason

    @property
    def item_reason(self) -> str:
        """What each of the chunk's items reports as its error, on every scoring engine."""
        return f"pool chunk {self.number} {self.reason}: item skipped"


class PoolStore:
    """Read a pool chunk by chunk. Open with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._group = zarr.open_group(str(path / "scoring"), mode="r")
        self.size: tuple[int, int] = tuple(manifest["size"])  # type: ignore[assignment]
        self.chunk_size: int = manifest["chunk"]
        self.classes: tuple[str, ...] = tuple(manifest["classes"])
        self.roi_format: str = manifest["roi_format"]  # of the ROI the scorer reads
        self.roi_source: str = manifest.get("roi_source", DEFAULT_ROI_SOURCE)
        self.oracle_roi_format: str = manifest.get("oracle_roi_format", self.roi_format)

    @classmethod
    def open(cls, path: str | Path) -> PoolStore:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise ValueError(f"{path}: not a pool store (missing {manifest_path.name}); create one with `xal ingest`")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        return cls(path, manifest)

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self) / self.chunk_size)

    def _rows(self, number: int) -> slice:
        if not 0 <= number < self.n_chunks:
            raise IndexError(f"chunk {number} out of range: the pool has {self.n_chunks} chunks")
        start = number * self.chunk_size
        return slice(start, min(start + self.chunk_size, len(self)))

    def raw_chunk(self, number: int) -> dict[str, np.ndarray]:
        """The stored arrays of one chunk, as NumPy (used by :meth:`verify` and the reader)."""
        rows = self._rows(number)
        names = _SCORING_ARRAYS + (_BOX_ARRAYS if self.roi_format == "boxes" else ())
        return {name: self._group[name][rows] for name in names}

    def read_chunk(self, number: int) -> PoolChunk:
        return self._decode(number, self.raw_chunk(number))

    def read_verified_chunk(self, number: int) -> PoolChunk:
        """:meth:`read_chunk`, after checking the stored arrays against the manifest's checksum.

        Why: zarr reads a missing chunk file as zeros (blank images, empty ids) and damaged bytes
        may decode to anything, so without the check a damaged pool scores silently wrong. The
        checksum is already in the manifest and costs one SHA-256 pass over the chunk.

        Raises:
            CorruptChunk: the chunk is unreadable, fails its checksum, or does not decode.
        """
        raw = self.verified_raw_chunk(number)
        try:
            return self._decode(number, raw)
        except ValueError as error:
            raise CorruptChunk(number, self._rows(number), f"does not decode ({error})") from None

    def verified_raw_chunk(self, number: int) -> dict[str, np.ndarray]:
        """:meth:`raw_chunk`, checked against the manifest's checksum (for readers that decode
        elsewhere, e.g. a Ray read task whose scorer decodes where it runs).

        Raises:
            CorruptChunk: the chunk is unreadable or fails its checksum.
        """
        rows = self._rows(number)
        try:
            raw = self.raw_chunk(number)
        except Exception as error:  # zarr/numcodecs raise many types for damaged files
            raise CorruptChunk(number, rows, f"unreadable ({type(error).__name__})") from None
        checksums = self.manifest.get("checksums")
        entry = checksums[number] if isinstance(checksums, list) and number < len(checksums) else None
        expected = entry.get("scoring") if isinstance(entry, dict) else None
        if expected is None:
            raise CorruptChunk(number, rows, "has no checksum in manifest.json")
        if _checksum([raw[name] for name in sorted(raw)]) != expected:
            raise CorruptChunk(number, rows, "does not match its checksum in manifest.json (a file missing or damaged)")
        return raw

    def _read_or_corrupt(self, number: int) -> PoolChunk | CorruptChunk:
        try:
            return self.read_verified_chunk(number)
        except CorruptChunk as error:
            return error

    def _decode(self, number: int, raw: dict[str, np.ndarray]) -> PoolChunk:
        ids = [bytes(row).rstrip(b"\0").decode("utf-8") for row in raw["ids"]]
        known = torch.from_numpy(raw["roi_known"].astype(bool))
        if self.roi_format == "boxes":
            counts = torch.from_numpy(raw["roi_counts"].astype(np.int64))
            roi = Roi.from_padded_boxes(torch.from_numpy(raw["roi_boxes"]), counts, size=self.size)
        else:
            roi = Roi.from_packed_masks(torch.from_numpy(raw["roi_packed"]), self.size[1], known)
        images = torch.from_numpy(raw["images"]).to(torch.float32)
        return PoolChunk(number, torch.from_numpy(raw["index"]), ids, images, roi)

    def chunks(self, *, start: int = 0, prefetch: int = 2, verify: bool = False) -> Iterator[PoolChunk]:
        """Chunks in order from chunk ``start``; ``prefetch`` chunks are read ahead on threads.

        Memory is bounded by ``prefetch + 1`` chunks whatever the pool size. ``start`` lets an
        interrupted scoring job resume from its last finished chunk. With ``verify``, every chunk
        is checked against its checksum (:meth:`read_verified_chunk`) and one that fails comes as
        a :class:`CorruptChunk` value in its place (not raised), so the caller can report its
        items and go on with the rest.
        """
        if prefetch < 0:
            raise ValueError(f"prefetch: must be >= 0, got {prefetch}")
        read = self._read_or_corrupt if verify else self.read_chunk
        if prefetch == 0:
            for number in range(start, self.n_chunks):
                yield read(number)
            return
        with ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="pool-prefetch") as pool:
            pending: list[Future[PoolChunk]] = []
            next_number = start
            while next_number < self.n_chunks or pending:
                while next_number < self.n_chunks and len(pending) <= prefetch:
                    pending.append(pool.submit(read, next_number))
                    next_number += 1
                yield pending.pop(0).result()

    def images(self, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """float32 ``[n, C, H, W]`` images of the given items, in the order given.

        What a trainer reads for the items acquired so far: a coordinate selection, so only the
        chunks that hold them are decompressed, whatever the pool size.
        """
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"item index out of range 0..{len(self) - 1}")
        array = self._group["images"]
        if not rows.size:
            return torch.zeros((0, *array.shape[1:]), dtype=torch.float32)
        order = np.argsort(rows, kind="stable")  # sorted reads touch each chunk once
        data = np.empty((rows.size, *array.shape[1:]), dtype=array.dtype)
        data[order] = array.get_orthogonal_selection((rows[order],))
        return torch.from_numpy(data).to(torch.float32)

    def roi_known(self) -> np.ndarray:
        """bool ``[N]``: which items have a known ROI (one byte per item, read whole)."""
        return self._group["roi_known"][:].astype(bool)

    def source_ids(self, index: torch.Tensor | Sequence[int]) -> list[str]:
        """The source ids (e.g. ``BraTS20_Training_001/slice_077``) of the given items, in order."""
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"item index out of range 0..{len(self) - 1}")
        if not rows.size:
            return []
        raw = self._group["ids"].get_orthogonal_selection((rows,))
        return [bytes(row).rstrip(b"\0").decode("utf-8") for row in raw]

    def oracle_labels(self, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The labels of the given items: what the oracle reveals once they are acquired."""
        labels = zarr.open_array(str(self.path / "oracle" / "labels"), mode="r")
        rows = np.asarray(index, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"item index out of range 0..{len(self) - 1}")
        return torch.from_numpy(labels.get_coordinate_selection(rows).astype(np.int64)) if rows.size else \
            torch.zeros(0, dtype=torch.int64)

    def _oracle_arrays(self) -> tuple[str, ...]:
        """The ``oracle/`` arrays besides ``labels`` (none in pools written before they existed)."""
        if not (self.path / "oracle" / "roi_known").exists():
            return ()
        return _ROI_ARRAYS + (_BOX_ARRAYS if self.oracle_roi_format == "boxes" else ())

    def oracle_rois(self, index: torch.Tensor | Sequence[int]) -> list[Any]:
        """The expert's ROI of the given items, as stored for the oracle: per item a ``[M, 4]``
        float32 array of boxes (box pools), a bool ``[H, W]`` mask, or ``None`` (nobody drew it).

        Read from ``oracle/``; a pool written before the ROI sources existed keeps the expert's
        ROIs in ``scoring/`` only, and is read there.
        """
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"item index out of range 0..{len(self) - 1}")
        if not rows.size:
            return []
        folder = self.path / ("oracle" if self._oracle_arrays() else "scoring")
        fmt = self.oracle_roi_format if self._oracle_arrays() else self.roi_format

        def read(name: str) -> np.ndarray:
            return zarr.open_array(str(folder / name), mode="r").get_orthogonal_selection((rows,))

        if fmt == "boxes":
            counts, boxes = read("roi_counts"), read("roi_boxes")
            return [None if count < 0 else boxes[row, :count].copy() for row, count in enumerate(counts.tolist())]
        known, packed = read("roi_known"), read("roi_packed")
        width = self.size[1]
        return [np.unpackbits(packed[row], axis=-1)[:, :width].astype(bool) if is_known else None
                for row, is_known in enumerate(known.tolist())]

    def verify(self) -> list[int]:
        """Chunks whose stored data no longer match the manifest's checksum (empty = all good)."""
        oracle = {name: zarr.open_array(str(self.path / "oracle" / name), mode="r")
                  for name in ("labels", *self._oracle_arrays())}
        bad = []
        for number in range(self.n_chunks):
            raw = self.raw_chunk(number)
            expected = self.manifest["checksums"][number]
            rows = self._rows(number)
            if _checksum([raw[name] for name in sorted(raw)]) != expected["scoring"] or \
                    _oracle_checksum({name: array[rows] for name, array in oracle.items()}) != expected["oracle"]:
                bad.append(number)
        return bad


class PoolWriter:
    """Write items into a new pool, or append to an existing one, one chunk at a time.

    Items are buffered until a chunk is full, so a write touches each chunk file once (a partly
    filled last chunk is rewritten on append). Use as a context manager; :meth:`close` writes the
    manifest, which is the commit point: a pool whose manifest was not rewritten still reads as
    its previous state.
    """

    def __init__(self, path: str | Path, *, size: tuple[int, int], channels: int, classes: Sequence[str],
                 roi_format: str, source: dict[str, Any], chunk: int = 1024, max_boxes: int = 64,
                 append: bool = False, roi_source: str = DEFAULT_ROI_SOURCE) -> None:
        """``roi_format`` is the format of the expert's ROIs (the dataset's); ``roi_source`` says what
        the scorer reads (``ROI_SOURCES``, module docstring)."""
        self.path = Path(path)
        if roi_format not in ("mask", "boxes"):
            raise ValueError(f"roi_format: expected 'mask' or 'boxes', got {roi_format!r}")
        if roi_source not in ROI_SOURCES:
            raise ValueError(f"roi_source: expected one of {', '.join(ROI_SOURCES)}, got {roi_source!r}")
        scoring_format = roi_format if roi_source == "expert" else "mask"
        manifest_path = self.path / "manifest.json"
        if append:
            if not manifest_path.is_file():
                raise ValueError(f"{self.path}: cannot append, no pool there (missing manifest.json)")
            self.manifest = json.loads(manifest_path.read_text())
            mine = {"size": list(size), "channels": channels, "classes": list(classes), "roi_format": scoring_format,
                    "roi_source": roi_source}
            theirs = {key: self.manifest.get(key, DEFAULT_ROI_SOURCE if key == "roi_source" else None) for key in mine}
            if mine != theirs:
                raise ValueError(f"{self.path}: cannot append items with {mine} to a pool with {theirs}")
            self.manifest.setdefault("sources", []).append(source)
        else:
            if manifest_path.exists() or (self.path.exists() and any(self.path.iterdir())):
                raise ValueError(f"{self.path}: exists and is not empty; use --append or choose a new --out")
            if chunk < 1 or max_boxes < 1:
                raise ValueError(f"chunk and max_boxes must be >= 1, got {chunk}, {max_boxes}")
            self.manifest = {"format": FORMAT, "size": list(size), "channels": channels, "classes": list(classes),
                             "roi_format": scoring_format, "roi_source": roi_source, "oracle_roi_format": roi_format,
                             "chunk": chunk, "max_boxes": max_boxes, "count": 0,
                             "skipped": 0, "image_dtype": "float16", "sources": [source], "checksums": []}
            self._create(size, channels, chunk, max_boxes, scoring_format, roi_format)
        self.size = tuple(self.manifest["size"])
        self.chunk = int(self.manifest["chunk"])
        self.max_boxes = int(self.manifest["max_boxes"])
        self.roi_format = scoring_format
        self.roi_source = roi_source
        self.oracle_roi_format = roi_format
        self._group = zarr.open_group(str(self.path / "scoring"), mode="r+")
        # oracle/ holds plain arrays, one folder each (no group); a pool from before oracle/roi_*
        # existed (always an expert pool) is appended to as it is.
        self._oracle = {path.name: zarr.open_array(str(path), mode="r+")
                        for path in sorted((self.path / "oracle").iterdir()) if path.is_dir()}
        self._oracle_rois = "roi_known" in self._oracle
        self.count = int(self.manifest["count"])
        self._buffer: list[tuple[Item, torch.Tensor, torch.Tensor | None]] = []
        # Every id the pool holds, as 16-byte digests (~60 B an item in memory): an id written twice
        # would be scored, ranked and shown to the expert twice, and its labels would disagree.
        self._ids_seen: set[bytes] = self._existing_ids() if append else set()
        self._skipped_before = int(self.manifest.get("skipped", 0))
        self.skipped = 0  # items of this session left out (the ingest report holds why)

    def _existing_ids(self) -> set[bytes]:
        ids = self._group["ids"]
        seen: set[bytes] = set()
        for start in range(0, self.count, self.chunk):
            for row in ids[start : min(start + self.chunk, self.count)]:
                seen.add(_id_digest(bytes(row).rstrip(b"\0")))
        return seen

    def _create(self, size: tuple[int, int], channels: int, chunk: int, max_boxes: int, scoring_format: str,
                oracle_format: str) -> None:
        height, width = size
        group = zarr.open_group(str(self.path / "scoring"), mode="w")
        group.create_array("images", shape=(0, channels, height, width), chunks=(chunk, channels, height, width),
                           dtype="float16")
        group.create_array("index", shape=(0,), chunks=(chunk,), dtype="int64")
        group.create_array("ids", shape=(0, ID_BYTES), chunks=(chunk, ID_BYTES), dtype="uint8")
        oracle = self.path / "oracle"

        def oracle_array(name: str, **spec: Any) -> None:
            zarr.create_array(str(oracle / name), **spec)

        oracle_array("labels", shape=(0,), chunks=(chunk,), dtype="int32")
        for create, fmt in ((group.create_array, scoring_format), (oracle_array, oracle_format)):
            create("roi_known", shape=(0,), chunks=(chunk,), dtype="bool")
            create("roi_packed", shape=(0, height, math.ceil(width / 8)), chunks=(chunk, height, math.ceil(width / 8)),
                   dtype="uint8")
            if fmt == "boxes":
                create("roi_boxes", shape=(0, max_boxes, 4), chunks=(chunk, max_boxes, 4), dtype="float32")
                create("roi_counts", shape=(0,), chunks=(chunk,), dtype="int32")

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, item: Item) -> None:
        """Buffer one item; raises ``ValueError`` naming the item if it does not fit the pool."""
        channels = self.manifest["channels"]
        if tuple(item.image.shape) != (channels, *self.size):
            raise ValueError(f"{item.id}: image shape {tuple(item.image.shape)}, pool expects {(channels, *self.size)}")
        if not 0 <= item.label < len(self.manifest["classes"]):
            raise ValueError(f"{item.id}: label {item.label} outside 0..{len(self.manifest['classes']) - 1}")
        if not torch.isfinite(item.image).all():
            raise ValueError(f"{item.id}: image holds NaN or infinite values")
        encoded = item.id.encode("utf-8")
        if len(encoded) > ID_BYTES:
            raise ValueError(f"{item.id}: id longer than {ID_BYTES} bytes")
        digest = _id_digest(encoded)
        if digest in self._ids_seen:
            raise ValueError(f"{item.id}: duplicate id, the pool already holds an item with this id "
                             "(from an earlier ingest, or earlier in this one); left out")
        self._buffer.append((item, self._mask(item), self._scoring_mask(item)))
        self._ids_seen.add(digest)
        rows_to_boundary = self.chunk - (self.count % self.chunk)
        if len(self._buffer) >= rows_to_boundary:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        items, self._buffer = self._buffer, []
        start, stop = self.count, self.count + len(items)
        data = self._encode(items, start)
        for name, values in data.items():
            array = self._array(name)
            array.resize((stop, *array.shape[1:]))
            array[start:stop] = values
        self.count = stop
        self._record_checksums(start, stop, data)

    def _array(self, name: str) -> Any:
        """``labels`` and ``oracle:…`` names live in ``oracle/``, the rest in ``scoring/``."""
        if name == "labels":
            return self._oracle["labels"]
        if name.startswith("oracle:"):
            return self._oracle[name.removeprefix("oracle:")]
        return self._group[name]

    def _scoring_mask(self, item: Item) -> torch.Tensor | None:
        """What the scorer reads for this item under the pool's ROI source (``None``: no ROI)."""
        if self.roi_source == "none":
            return None
        if self.roi_source == "anatomy":
            if item.prior is None:
                return None
            prior = item.prior
            if prior.dtype != torch.bool or tuple(prior.shape) != tuple(self.size):
                raise ValueError(f"{item.id}: the anatomy prior must be a bool mask of shape {tuple(self.size)}, "
                                 f"got {prior.dtype} {tuple(prior.shape)}")
            return prior
        return None if item.roi is None else self._mask(item)

    def _mask(self, item: Item) -> torch.Tensor:
        """The item's ROI as a dense mask, checked here so a bad ROI fails this item alone."""
        height, width = self.size
        if item.roi is None:
            return torch.zeros(height, width, dtype=torch.bool)
        if item.roi.dtype == torch.bool:
            if self.oracle_roi_format == "boxes":
                raise ValueError(f"{item.id}: a mask ROI cannot go into a pool of boxes")
            if tuple(item.roi.shape) != (height, width):
                raise ValueError(f"{item.id}: ROI mask shape {tuple(item.roi.shape)}, pool expects {(height, width)}")
            return item.roi
        if item.roi.dim() != 2 or item.roi.shape[1] != 4:
            raise ValueError(f"{item.id}: boxes must be [M, 4], got {tuple(item.roi.shape)}")
        if item.roi.shape[0] > self.max_boxes:
            raise ValueError(f"{item.id}: {item.roi.shape[0]} boxes, the pool holds at most {self.max_boxes} "
                             "(create it with a larger --max-boxes)")
        try:
            return Roi.from_boxes([item.roi], size=(height, width)).to_masks()[0]
        except ValueError as error:
            raise ValueError(f"{item.id}: {error}") from None

    def _encode(self, entries: list[tuple[Item, torch.Tensor, torch.Tensor | None]], start: int) -> dict[str, np.ndarray]:
        items = [item for item, _, _ in entries]
        ids = np.zeros((len(items), ID_BYTES), dtype=np.uint8)
        for row, item in enumerate(items):
            encoded = item.id.encode("utf-8")
            ids[row, : len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
        expert = self._roi_arrays(items, [mask for _, mask, _ in entries], [item.roi is not None for item in items],
                                  self.oracle_roi_format)
        data = {
            "images": torch.stack([item.image for item in items]).to(torch.float16).numpy(),
            "index": np.arange(start, start + len(items), dtype=np.int64),
            "ids": ids,
            "labels": np.array([item.label for item in items], dtype=np.int32),
        }
        if self.roi_source == "expert":
            data.update(expert)
        else:
            height, width = self.size
            scoring = [mask for _, _, mask in entries]
            empty = torch.zeros(height, width, dtype=torch.bool)
            data.update(self._roi_arrays(items, [empty if mask is None else mask for mask in scoring],
                                         [mask is not None for mask in scoring], "mask"))
        if self._oracle_rois:
            data.update({f"oracle:{name}": values for name, values in expert.items()})
        return data

    def _roi_arrays(self, items: list[Item], masks: list[torch.Tensor], known: list[bool], fmt: str) -> dict[str, np.ndarray]:
        """``roi_known``, ``roi_packed`` (and, for ``fmt == "boxes"``, the items' boxes) of a batch."""
        arrays = {"roi_known": np.array(known, dtype=bool), "roi_packed": np.packbits(torch.stack(masks).numpy(), axis=-1)}
        if fmt == "boxes":
            boxes = np.zeros((len(items), self.max_boxes, 4), dtype=np.float32)
            counts = np.full(len(items), -1, dtype=np.int32)
            for row, item in enumerate(items):
                if item.roi is not None and item.roi.dtype != torch.bool:
                    boxes[row, : len(item.roi)] = item.roi.to(torch.float32).numpy()
                    counts[row] = len(item.roi)
            arrays["roi_boxes"], arrays["roi_counts"] = boxes, counts
        return arrays

    def _record_checksums(self, start: int, stop: int, data: dict[str, np.ndarray]) -> None:
        """Checksum the chunks rows ``[start, stop)`` touched (from memory when a chunk is whole)."""
        checksums: list[Any] = self.manifest["checksums"]
        for number in range(start // self.chunk, math.ceil(stop / self.chunk)):
            lo, hi = number * self.chunk, min((number + 1) * self.chunk, stop)
            if lo >= start:
                part = {name: values[lo - start: hi - start] for name, values in data.items()}
            else:  # a partly filled chunk was extended: read back its rows
                rows = slice(lo, hi)
                part = {name: self._array(name)[rows] for name in data}
            oracle = {name.removeprefix("oracle:"): values for name, values in part.items()
                      if name == "labels" or name.startswith("oracle:")}
            scoring = _checksum([part[name] for name in sorted(part) if name != "labels" and not name.startswith("oracle:")])
            entry = {"rows": [lo, hi], "scoring": scoring, "oracle": _oracle_checksum(oracle)}
            if number < len(checksums):
                checksums[number] = entry
            else:
                checksums.append(entry)

    def close(self) -> None:
        """Write what is buffered and commit the manifest (``skipped`` adds to the pool's count)."""
        self.flush()
        self.manifest["count"] = self.count
        self.manifest["skipped"] = self._skipped_before + self.skipped
        temporary = self.path / "manifest.json.tmp"
        temporary.write_text(json.dumps(self.manifest, indent=1))
        temporary.replace(self.path / "manifest.json")
