"""Decode one DICOM X-ray to a float image in ``[0, 1]`` the way a radiologist's viewer shows it.

Steps, in the order the standard defines them: stored values → Modality LUT (rescale slope and
intercept, or a Modality LUT Sequence) → VOI LUT (a VOI LUT Sequence when present, else the first
window centre/width) → ``MONOCHROME1`` inverted so that bright always means dense → min-max to
``[0, 1]``. Any bit depth works because everything after decoding is float64. Colour images
(rare in these datasets: secondary captures) are averaged to one channel.

Compressed transfer syntaxes decode through pydicom's plugins; JPEG variants that Pillow cannot
decode (12-bit JPEG Extended, JPEG-LS, lossless JPEG) need the ``jpeg`` extra (pylibjpeg). A file
that cannot be decoded raises :class:`~xal_core.data.item.ItemError` naming the file and the fix.
An image whose header declares more than ``max_pixels`` decoded pixels (rows × columns × frames ×
samples: pydicom decodes every frame) is refused before decoding, so a small compressed file cannot
expand to gigabytes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from .guards import DEFAULT_MAX_PIXELS, check_pixels
from .item import ItemError

__all__ = ["DicomImage", "JPEG_HINT", "declared_shape", "decode_dicom", "parse_dicom", "read_dicom"]

JPEG_HINT = ("install the jpeg extra to decode it: pip install 'xal-ml[jpeg]' (pylibjpeg, pylibjpeg-libjpeg; "
             "pylibjpeg-openjpeg for JPEG 2000)")


@dataclass(frozen=True)
class DicomImage:
    pixels: np.ndarray  # float32 [H, W] in [0, 1]
    shape: tuple[int, int]  # the stored image's (rows, columns): the frame the boxes are drawn in
    photometric: str
    bits_stored: int


def read_dicom(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DicomImage:
    """Read and decode ``path`` (see the module doc for the steps and the ``max_pixels`` guard)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about harmless VR quirks of real files
            dataset = pydicom.dcmread(path)
    except FileNotFoundError:
        raise ItemError(str(path), "file not found") from None
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as error:
        raise ItemError(str(path), f"not a readable DICOM file ({type(error).__name__}: {error})") from None
    return decode_dicom(dataset, str(path), max_pixels=max_pixels)


def parse_dicom(data: bytes, where: str) -> pydicom.Dataset:
    """An instance received as bytes (a DICOMweb retrieve) → a dataset; ``ItemError`` when unreadable."""
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise ItemError(where, f"not a readable DICOM instance ({type(error).__name__}: {error})") from None


def decode_dicom(dataset: pydicom.Dataset, where: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 multiframe: str = "first") -> DicomImage:
    """Decode an opened ``dataset`` by the module doc's rules; ``where`` names it in errors.

    ``multiframe``: ``"first"`` (files: multi-frame X-rays are not expected, the first frame is the
    image) or ``"refuse"`` (an ``ItemError`` naming the frame count: a DICOMweb source may hold cine
    or tomosynthesis instances, which are not one 2D image).
    """
    path = where
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if "PixelData" not in dataset:
        raise ItemError(str(path), "DICOM file has no pixel data")
    if frames > 1 and multiframe == "refuse":
        raise ItemError(str(path), f"multi-frame instance ({frames} frames): a pool item is one 2D image; "
                        "multi-frame instances are refused, not split")
    check_pixels(path, declared_shape(dataset), max_pixels)
    try:
        stored = dataset.pixel_array
    except (RuntimeError, NotImplementedError) as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ItemError(str(path), f"cannot decode transfer syntax {name!r}: {JPEG_HINT} ({error})") from None
    except (ValueError, EOFError, AttributeError, KeyError, TypeError) as error:
        raise ItemError(str(path), f"corrupt or truncated pixel data ({error})") from None
    if frames > 1:
        stored = stored[0]  # multi-frame X-rays are not expected; the first frame is the image
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).strip()
    if stored.ndim == 3:  # colour: average the samples
        values = stored.astype(np.float64).mean(axis=-1)
    else:
        values = apply_modality_lut(stored, dataset)
        if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)  # a VOI LUT indexes by integers (identity rescale is common)
        values = apply_voi_lut(values, dataset, prefer_lut=True).astype(np.float64)
    if values.ndim != 2:
        raise ItemError(str(path), f"expected a 2D image, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ItemError(str(path), "pixel values are not finite after the LUTs")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    bits = int(getattr(dataset, "BitsStored", 8) or 8)
    return DicomImage(scaled.astype(np.float32), (int(values.shape[0]), int(values.shape[1])), photometric, bits)


def declared_shape(dataset: pydicom.Dataset) -> tuple[int, ...]:
    """Rows, columns (and frames, samples when above 1) as the header declares them: what
    ``pixel_array`` allocates, so a caller can refuse a decompression bomb before decoding
    (``guards.check_pixels``; the annotator's viewer does too)."""
    def number(keyword: str, default: int) -> int:
        try:
            return int(getattr(dataset, keyword, default) or default)
        except (TypeError, ValueError):
            return default
    frames, samples = number("NumberOfFrames", 1), number("SamplesPerPixel", 1)
    return ((frames,) if frames > 1 else ()) + (number("Rows", 0), number("Columns", 0)) + \
        ((samples,) if samples > 1 else ())
