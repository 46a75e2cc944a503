"""DICOM decoding: replicas in every encoding, and the sample files pydicom ships in its wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
import pytest

from xal_core.data.dicom import read_dicom
from xal_core.data.item import ItemError
from xal_core.data.replicas.dicom_writer import ENCODINGS, write_xray

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # bundled in the wheel, no download


def _density() -> np.ndarray:
    density = np.tile(np.linspace(0.0, 0.6, 50), (40, 1))
    density[10:20, 5:15] = 1.0
    return density


@pytest.mark.parametrize("encoding", [*ENCODINGS, (8, "MONOCHROME1", "none"), (10, "MONOCHROME2", "lut")],
                         ids=lambda e: "-".join(map(str, e)))
def test_every_encoding_decodes_to_bright_is_dense(tmp_path, encoding):
    bits, photometric, voi = encoding
    write_xray(tmp_path / "x.dcm", _density(), bits=bits, photometric=photometric, voi=voi)
    decoded = read_dicom(tmp_path / "x.dcm")
    assert decoded.shape == (40, 50) and decoded.bits_stored == bits and decoded.photometric == photometric
    pixels = decoded.pixels
    assert pixels.dtype == np.float32 and pixels.min() == 0.0 and pixels.max() == 1.0
    assert pixels[15, 10] == 1.0  # the dense patch is brightest, MONOCHROME1 included
    row = pixels[30]
    assert np.all(np.diff(row) >= 0) and row[0] < 0.05  # monotone ramp: no inversion
    if voi == "lut":  # the VOI LUT's gamma 0.8 bends the linear ramp upwards
        top = (1 << bits) - 1
        stored = np.round(np.round(0.6 * 25 / 49 * top) * 255 / top)
        expected = np.round(65535 * (stored / 255) ** 0.8) / 65535
        assert row[25] == pytest.approx(expected, abs=2e-3) and row[25] > 0.6 * 25 / 49 + 0.05
    else:
        assert row[25] == pytest.approx(0.6 * 25 / 49, abs=2e-3)


def test_bundled_ct_and_mr_samples_decode():
    for name, shape in (("CT_small.dcm", (128, 128)), ("MR_small.dcm", (64, 64))):
        decoded = read_dicom(TEST_FILES / name)
        assert decoded.shape == shape and 0.0 <= decoded.pixels.min() < decoded.pixels.max() <= 1.0


def test_bundled_jpeg_baseline_colour_sample_decodes_to_one_channel():
    decoded = read_dicom(TEST_FILES / "SC_rgb_jpeg.dcm")  # JPEG Baseline through Pillow, RGB averaged
    assert decoded.pixels.ndim == 2 and decoded.shape == (256, 256) and decoded.pixels.max() == 1.0


def test_bundled_truncated_file_is_a_clear_item_error():
    with pytest.raises(ItemError, match="truncated") as info:
        read_dicom(TEST_FILES / "MR_truncated.dcm")
    assert info.value.path.endswith("MR_truncated.dcm")


def test_no_pixel_data_and_not_dicom(tmp_path):
    with pytest.raises(ItemError, match="no pixel data"):
        read_dicom(TEST_FILES / "rtplan.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(ItemError, match="not a readable DICOM"):
        read_dicom(tmp_path / "junk.dcm")
    with pytest.raises(ItemError, match="not found"):
        read_dicom(tmp_path / "absent.dcm")


def test_truncated_replica_is_an_item_error(tmp_path):
    write_xray(tmp_path / "x.dcm", _density(), bits=16, photometric="MONOCHROME2", voi="window")
    data = (tmp_path / "x.dcm").read_bytes()
    (tmp_path / "x.dcm").write_bytes(data[: len(data) - 1500])
    with pytest.raises(ItemError):
        read_dicom(tmp_path / "x.dcm")


def test_12_bit_jpeg_names_the_plugin_or_decodes_with_it():
    path = TEST_FILES / "JPEG-lossy.dcm"  # JPEG Extended, 12-bit: Pillow cannot decode it
    if importlib.util.find_spec("pylibjpeg") and importlib.util.find_spec("libjpeg"):
        assert read_dicom(path).pixels.max() == 1.0
    else:
        with pytest.raises(ItemError, match=r"pylibjpeg.*xal-ml\[jpeg\]|xal-ml\[jpeg\].*pylibjpeg"):
            read_dicom(path)
