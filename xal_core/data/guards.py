"""Per-item guards for files named by a dataset's own tables: stay inside the root, stay small.

Why here, once: ``labels.csv`` and the X-ray CSVs come from whoever shared the dataset. A row that
names ``../../home/user/secret.png``, an absolute path or a symlink out of the folder would let
that file's pixels into a pool that is then shown to an expert or sent to a scoring service; an
image whose header claims 20 000 × 20 000 pixels would take gigabytes to decode. Both are refused
for that item alone (an :class:`ItemError`, or a ``ValueError`` at index time, becomes one line of
the ingest report) so the rest of the dataset still goes in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePath

from .item import ItemError

__all__ = ["DEFAULT_MAX_PIXELS", "check_pixels", "contained_path", "pixel_limit"]

# 50 megapixels: above the largest 2D medical images in routine use (full-field digital mammograms
# reach ~28 MP, chest radiographs ~18 MP) and low enough that decoding one image stays near
# 300 MB (about 6 bytes a pixel on the way to float32, see generic.read_plain_image).
DEFAULT_MAX_PIXELS = 50_000_000


def pixel_limit(value: object) -> int:
    """``max_pixels`` as given to an adapter or ``--max-pixels``, checked: a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_pixels: expected a positive integer, got {value!r}")
    return value


def check_pixels(path: str | Path, shape: Sequence[int], max_pixels: int) -> None:
    """Raise :class:`ItemError` when an image of ``shape`` (from its header) exceeds ``max_pixels``.

    Called before any pixel is decoded, so the refusal costs a header read.
    """
    count = 1
    for extent in shape:
        count *= int(extent)
    if count > max_pixels:
        dims = " × ".join(str(int(extent)) for extent in shape)
        raise ItemError(str(path), f"image is {dims} = {count:,} pixels, above the limit of {max_pixels:,} "
                                   "(raise it with xal ingest --max-pixels, or the adapter option max_pixels)")


def contained_path(root: Path, name: str, what: str = "path") -> Path:
    """``root / name`` when it stays inside ``root`` once resolved, else ``ValueError`` saying why.

    Refused: an empty name, an absolute path, and any path whose resolved form (``..`` segments
    and symlinks followed, including symlinks inside the root) lies outside the resolved root.
    Symlinks whose targets stay inside the root are fine. A missing file is *not* checked here.
    """
    if not name:
        raise ValueError(f"empty {what}")
    if PurePath(name).is_absolute():
        raise ValueError(f"{what} {name!r} is absolute; paths must be relative to the dataset folder")
    candidate = root / name
    base = root.resolve()
    if not candidate.resolve().is_relative_to(base):
        raise ValueError(f"{what} {name!r} leads outside the dataset folder (through '..' or a symlink); refused")
    return candidate
