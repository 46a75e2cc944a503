"""Run data from real dataset layouts: replicas written with nibabel / pydicom, split by case."""

from __future__ import annotations

from pathlib import Path

import pytest

from xal_cli.session import RunSession
from xal_core.data import open_dataset
from xal_core.data.replicas.brats import write_brats
from xal_core.data.replicas.vindr import write_vindr
from xal_core.loop.data_spec import DataSpec
from xal_core.loop.experiment import prepare_data
from xal_core.loop.protocol import Protocol, TrainRecipe


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    write_brats(root, 8, seed=1, shape=(40, 40, 12))
    return root


def test_brats_test_split_holds_whole_cases(brats, tmp_path):
    data = prepare_data(tmp_path / "data", DataSpec("brats", brats, size=(32, 32), test_fraction=0.3))
    pool_cases = {source.split("/")[0] for source in data.pool.source_ids(range(len(data.pool)))}
    test_cases = {source.split("/")[0] for source in data.test.ids}
    assert pool_cases and test_cases and not pool_cases & test_cases, "slices of one case on both sides"
    assert data.val is None  # early stopping holds out part of the labels instead
    assert data.class_names == ("no_tumour", "tumour")
    every = open_dataset("brats", brats, size=(32, 32))
    assert len(data.pool) + len(data.test) == len(every)  # every slice on exactly one side


def test_vindr_boxes_become_test_masks(tmp_path):
    write_vindr(tmp_path / "vindr", 12)
    data = prepare_data(tmp_path / "data", DataSpec("vindr", tmp_path / "vindr", size=(32, 32), test_fraction=0.3))
    assert len(data.test) and len(data.pool)
    assert data.test.roi.known.all()  # "No finding" is a known-empty ROI, not an unknown one
    assert data.test.roi.to_masks().shape == (len(data.test), 32, 32)


def test_a_tiny_run_on_brats_nifti(brats, tmp_path):
    protocol = Protocol(strategies=("dual",), seeds=(0,), initial=6, rounds=1, per_round=4,
                        train=TrainRecipe(architecture="resnet10", epochs=1, batch_size=4))
    outcome = RunSession(tmp_path, protocol, data=DataSpec("brats", brats, size=(32, 32), test_fraction=0.3),
                         scorer="inprocess", progress=False, overlay_images=2).run()
    assert outcome.needs_labels is None and [row["labels"] for row in outcome.rows] == [6, 10]


def test_an_interrupted_preparation_leaves_nothing_half_written_and_the_rerun_succeeds(tmp_path):
    """A run stopped while writing its data (Ctrl-C here; kill -9 alike) used to leave RUN_DIR/data
    half written, and every later run refused it ("delete it and rerun"). Now the data is written
    aside and renamed into place at the end."""
    spec = DataSpec("synthetic", size=(32, 32), pool_size=80, val_size=8, test_size=12)

    def interrupt(phase: str, done: int, total: int) -> None:
        if phase == "pool" and done == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_data(tmp_path / "data", spec, on_progress=interrupt)
    assert not (tmp_path / "data").exists()
    data = prepare_data(tmp_path / "data", spec)
    reference = prepare_data(tmp_path / "reference" / "data", spec)
    assert len(data.pool) == len(reference.pool) == 80 and len(data.test) == 12
    assert data.pool.source_ids(range(80)) == reference.pool.source_ids(range(80))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "reference"]  # no staging folder left
    assert prepare_data(tmp_path / "data", spec).pool_path == data.pool_path  # reopened as is
