"""Write small but standard-conforming DICOM X-rays (pydicom), with the encodings real data uses.

Real chest X-ray sets mix 12- and 16-bit data, ``MONOCHROME1`` and ``MONOCHROME2``, window
centre/width and VOI LUT sequences; the replicas use each so the decoder is exercised on all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["write_xray", "ENCODINGS"]

# (bits stored, photometric, VOI): the replicas cycle through these
ENCODINGS = (
    (16, "MONOCHROME2", "window"),
    (12, "MONOCHROME1", "window"),
    (16, "MONOCHROME2", "lut"),
    (12, "MONOCHROME2", "none"),
)


def write_xray(path: Path, density: np.ndarray, *, bits: int, photometric: str, voi: str,
               study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None) -> None:
    """Store ``density`` (float in [0, 1], bright = dense) as an uncompressed DX image.

    With ``MONOCHROME1`` the stored values are inverted (bright = low value), as real CR/DX do.
    """
    top = (1 << bits) - 1
    values = np.round(np.clip(density, 0, 1) * top).astype(np.uint16)
    if photometric == "MONOCHROME1":
        values = (top - values).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "replica"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    if voi == "window":
        ds.WindowCenter = top / 2
        ds.WindowWidth = top
    elif voi == "lut":
        item = Dataset()
        item.LUTDescriptor = [256, 0, 16]  # 256 entries, first input value 0, 16-bit output
        # a gamma curve sampled over the input range [0, 255]; inputs above 255 clamp to the last
        # entry, so the stored values are scaled into 0..255 below
        item.LUTData = np.round(65535 * (np.arange(256) / 255) ** 0.8).astype("<u2").tobytes()
        item.LUTExplanation = "replica gamma"
        ds.VOILUTSequence = Sequence([item])
        values = np.round(values.astype(np.float64) * 255 / top).astype(np.uint16)
    ds.PixelData = values.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
