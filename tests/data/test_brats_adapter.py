"""BraTS adapter on 2020 and 2021 replicas written with nibabel (32×32×16 volumes)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from xal_core.data import PoolStore, open_dataset
from xal_core.data.ingest import ingest
from xal_core.data.item import ItemError
from xal_core.data.replicas.brats import QUIRK_355_SEG, write_brats

SHAPE = (32, 32, 16)


@pytest.fixture(scope="module")
def brats2020(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats2020")
    return root, write_brats(root, 3, seed=1, shape=SHAPE)


def test_slices_ids_labels_and_roi_match_the_segmentation(brats2020):
    root, cases = brats2020
    assert cases[-1] == "BraTS20_Training_355"
    data = open_dataset("brats", root, size=(32, 32))
    # documented rule: floor(0.1·16) = 1 ≤ z < ceil(0.9·16) = 15
    assert len(data) == 3 * 14 and data.skipped == [] and data.options["year"] == 2020
    assert data[0].id == "BraTS20_Training_001/z001" and data[13].id == "BraTS20_Training_001/z014"
    folder = root / "MICCAI_BraTS2020_TrainingData"
    for item in data:
        case, z = item.meta["case"], item.meta["slice"]
        seg_name = QUIRK_355_SEG if case.endswith("355") else f"{case}_seg.nii"
        seg = np.asarray(nib.load(folder / case / seg_name).dataobj)[:, :, z].T
        assert torch.equal(item.roi, torch.from_numpy(seg > 0))  # native size: exact
        assert item.label == int((seg > 0).any())
    assert {item.label for item in data} == {0, 1}


def test_normalisation_inside_the_brain(brats2020):
    root, _ = brats2020
    data = open_dataset("brats", root, size=(32, 32), modality=["flair", "t2"])
    item = data[7]
    assert item.image.shape == (2, 32, 32) and data.channels == 2
    flair = np.asarray(nib.load(root / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001" /
                                "BraTS20_Training_001_flair.nii").dataobj)[:, :, item.meta["slice"]].T
    image = item.image[0].numpy()
    assert np.all(image[flair == 0] == 0) and image.min() >= 0 and image.max() <= 1
    assert image[flair > 0].mean() > 0.2


def test_resampled_output(brats2020):
    item = open_dataset("brats", brats2020[0], size=(20, 24))[8]
    assert item.image.shape == (1, 20, 24) and item.roi.shape == (20, 24) and item.roi.dtype == torch.bool


def test_grade_task_uses_name_mapping(brats2020):
    root, cases = brats2020
    data = open_dataset("brats", root, size=(32, 32), task="grade")
    assert data.classes == ("HGG", "LGG")
    grades = {item.meta["case"]: item.label for item in data}
    assert grades == {cases[0]: 0, cases[1]: 1, cases[2]: 0}  # the replica makes every third case LGG


def test_2021_layout_gz_and_grade_needs_name_mapping(tmp_path):
    cases = write_brats(tmp_path, 2, year=2021, shape=SHAPE)
    assert (tmp_path / cases[0] / f"{cases[0]}_flair.nii.gz").is_file()
    data = open_dataset("brats", tmp_path, size=(32, 32), modality="t1ce")
    assert len(data) == 28 and data.options["year"] == 2021 and data[3].id == f"{cases[0]}/z004"
    with pytest.raises(ValueError, match="name_mapping.csv"):
        open_dataset("brats", tmp_path, size=(32, 32), task="grade")


def test_missing_seg_and_corrupt_volume_are_skipped(tmp_path):
    cases = write_brats(tmp_path, 3, seed=2, shape=SHAPE)
    folder = tmp_path / "MICCAI_BraTS2020_TrainingData"
    (folder / cases[0] / f"{cases[0]}_seg.nii").unlink()
    flair = folder / cases[1] / f"{cases[1]}_flair.nii"
    flair.write_bytes(flair.read_bytes()[:2000])  # header intact, voxels truncated
    data = open_dataset("brats", tmp_path, size=(32, 32))
    assert [s.reason for s in data.skipped] == [f"case {cases[0]}: file missing"]
    assert data.skipped[0].path.endswith(f"{cases[0]}_seg.nii")
    with pytest.raises(ItemError, match="corrupt or truncated NIfTI"):
        data[0]
    summary = ingest(data, tmp_path / "pool", workers=2, chunk=8)
    assert (summary.written, summary.skipped) == (14, 1 + 14)
    pool = PoolStore.open(tmp_path / "pool")
    assert len(pool) == 14 and all(i.startswith(cases[2]) for c in pool.chunks() for i in c.ids)
    assert pool.verify() == []


def test_wrong_root_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="MICCAI_BraTS2020_TrainingData"):
        open_dataset("brats", tmp_path, size=(32, 32))
    with pytest.raises(ValueError, match="modality"):
        open_dataset("brats", tmp_path, size=(32, 32), modality="dwi")
