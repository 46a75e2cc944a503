"""Read one PNG as a 2D array, refusing oversized images from the header, before any decoding.

Why not ``Image.open``: Pillow's own guard against decompression bombs raises
``DecompressionBombError`` above 2 × ``Image.MAX_IMAGE_PIXELS`` (~179 MP) and only *warns* between
89 and 179 MP, then decodes, so a 12 000² PNG (a 150 kB file of one colour) still took gigabytes
downstream. The limit here is the caller's (``--max-pixels``), checked on the parsed header.
PNG has no reduced-resolution decode (unlike JPEG's ``draft`` or JPEG 2000's ``reduce``), so an
image is either refused or decoded whole; the array comes back in its stored integer type (1, 2
or 4 bytes a pixel) so the caller chooses when to widen it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import PngImagePlugin

from .guards import check_pixels
from .item import ItemError

__all__ = ["read_png"]

_NATIVE_MODES = ("L", "I", "I;16")  # grey modes NumPy can take as they are; others go through "L"


def read_png(path: Path, max_pixels: int) -> np.ndarray:
    """``[H, W]`` array of ``path`` in its stored type (uint8, uint16 or int32); colour becomes grey.

    Raises :class:`ItemError` for a file that is not a readable PNG or whose header exceeds
    ``max_pixels``.
    """
    try:
        # The plugin class parses the header only and, unlike Image.open, applies no bomb check
        # of its own: ours below is the one that counts, with the configured limit.
        with PngImagePlugin.PngImageFile(path) as image:
            width, height = image.size
            check_pixels(path, (height, width), max_pixels)
            image.load()
            grey = image if image.mode in _NATIVE_MODES else image.convert("L")
            values = np.asarray(grey)
    except ItemError:
        raise
    except (SyntaxError, OSError, ValueError, EOFError, zlib.error) as error:
        raise ItemError(str(path), f"unreadable PNG ({type(error).__name__}: {error})") from None
    if values.ndim != 2:
        raise ItemError(str(path), f"expected a 2D grey image, got shape {values.shape}")
    return values
