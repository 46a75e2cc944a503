"""What ``RegisterPool`` checks before it accepts a pool store: a well-formed manifest, every chunk there.

Why: a malformed manifest (a JSON list, a missing field) would otherwise surface as ``INTERNAL``
from deep in ``PoolStore``, and zarr reads a chunk file deleted after ingest as zeros, which would
be scored as blank images. The manifest is checked field by field here (``ValueError`` naming the
field), and every chunk file of the arrays that are never legitimately all zeros is looked for. A
missing one is settled by the chunk's checksum: zarr does not store a chunk that is entirely zeros,
so a missing file is fine exactly when the zeros zarr reads in its place match the checksum ingest
recorded. During jobs every chunk is verified again as it is read (``PoolStore.read_verified_chunk``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from xal_core.data.pool_store import FORMAT, CorruptChunk, PoolStore

__all__ = ["open_checked_pool", "manifest_digest", "MAX_MANIFEST_BYTES"]

MAX_MANIFEST_BYTES = 64 << 20
# Arrays whose chunks are never all zeros in a real pool (images rarely, index and ids never but
# for a one-item chunk 0): a missing file there is checked at once. The ROI arrays are often all
# zeros (no ROI drawn) and are covered by the per-chunk check during jobs.
_PRESENT_ARRAYS = ("images", "index", "ids")


def manifest_digest(path: Path) -> str:
    """SHA-256 of the pool's ``manifest.json``: it lists every chunk's checksum, so it names the
    pool's content (what a job pins)."""
    import hashlib

    return hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()


def _check_manifest(manifest: object) -> dict:
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest.json: expected a JSON object, got a JSON {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"manifest.json: format: {manifest.get('format')!r}, expected {FORMAT!r}")
    size = manifest.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 1 for v in size)):
        raise ValueError(f"manifest.json: size: expected [H, W] of positive integers, got {size!r}")
    for key in ("chunk", "count", "channels"):
        value = manifest.get(key, 1 if key == "channels" else None)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "count" else 1):
            raise ValueError(f"manifest.json: {key}: expected a {'non-negative' if key == 'count' else 'positive'} "
                             f"integer, got {value!r}")
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError("manifest.json: classes: expected a non-empty list of names")
    if manifest.get("roi_format") not in ("mask", "boxes"):
        raise ValueError(f"manifest.json: roi_format: expected 'mask' or 'boxes', got {manifest.get('roi_format')!r}")
    n_chunks = math.ceil(manifest["count"] / manifest["chunk"])
    checksums = manifest.get("checksums")
    if not isinstance(checksums, list) or len(checksums) != n_chunks:
        got = len(checksums) if isinstance(checksums, list) else type(checksums).__name__
        raise ValueError(f"manifest.json: checksums: expected one entry per chunk ({n_chunks}), got {got}")
    for number, entry in enumerate(checksums):
        if not (isinstance(entry, dict) and isinstance(entry.get("scoring"), str)):
            raise ValueError(f"manifest.json: checksums[{number}]: expected an object with a 'scoring' checksum")
    return manifest


def open_checked_pool(path: Path) -> PoolStore:
    """The pool store at ``path`` once its manifest and chunk files pass the checks above.

    Raises:
        ValueError: naming the manifest field or the chunk that is wrong (paths relative to the pool).
    """
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError("not a pool store (no manifest.json); create one with `xal ingest`")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest.json: larger than {MAX_MANIFEST_BYTES >> 20} MB")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"manifest.json: not JSON ({error})") from None
    manifest = _check_manifest(manifest)
    try:
        store = PoolStore(path, manifest)
        arrays = {name: store._group[name] for name in _PRESENT_ARRAYS}  # noqa: SLF001 - read-only use
    except Exception as error:  # zarr raises several types for a missing or damaged group
        raise ValueError(f"scoring/: not a readable pool group ({type(error).__name__})") from None
    for name, array in arrays.items():
        if array.shape[0] != len(store):
            raise ValueError(f"scoring/{name}: {array.shape[0]} rows, manifest.json says count {len(store)}")
    for number in range(store.n_chunks):
        for name, array in arrays.items():
            key = array.metadata.encode_chunk_key((number,) + (0,) * (array.ndim - 1))
            if (path / "scoring" / name / key).exists():  # its content is verified when a job reads it
                continue
            try:  # a chunk of zeros is legitimately absent; its checksum says whether this one is
                store.read_verified_chunk(number)
            except CorruptChunk:
                raise ValueError(f"scoring/{name}/{key}: chunk {number} is missing (its checksum does not "
                                 "match zeros); re-ingest the pool") from None
            break
    return store
