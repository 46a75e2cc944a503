"""``source_image``: every file-backed adapter reads an item's image back at its source resolution.

What the browser annotator shows as "the original": it must be the very image the pool item was
made from, so resizing it as ingest does gives the pool item's image back exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.data.test_generic_adapter import folder  # noqa: F401  (the mixed PNG/DICOM/NIfTI folder)
from xal_core.data import open_dataset
from xal_core.data.item import resize_image
from xal_core.data.replicas.brats import write_brats
from xal_core.data.replicas.siim import write_siim
from xal_core.data.replicas.vindr import write_vindr

SIZE = (32, 24)


def _check_every_item(data) -> None:
    for item in data:
        native = data.source_image(item.id)
        assert native is not None and native.dtype == np.float32, item.id
        assert tuple(native.shape[-2:]) != data.size  # not the pool frame: the file's own
        if "source_shape" in item.meta:
            assert list(native.shape[-2:]) == item.meta["source_shape"]
        assert torch.equal(resize_image(native, data.size), item.image), item.id
    assert data.source_image("no-such-item") is None


@pytest.mark.parametrize("kind", ["vindr", "siim", "brats"])
def test_dicom_and_nifti_adapters_read_the_source_back(kind, tmp_path):
    writers = {"vindr": lambda root: write_vindr(root, 4, seed=2), "siim": lambda root: write_siim(root, 4, seed=2),
               "brats": lambda root: write_brats(root, 2, seed=2)}
    writers[kind](tmp_path)
    _check_every_item(open_dataset(kind, tmp_path, size=SIZE))


def test_the_generic_adapter_reads_pngs_dicoms_and_nifti_slices_back(folder):  # noqa: F811
    _check_every_item(open_dataset("generic", folder, size=SIZE))


def test_generated_data_has_no_source():
    data = open_dataset("synthetic", size=SIZE, n=4)
    assert data.source_image(data[0].id) is None
