"""Tiny real runs for the annotator's tests: a synthetic pool, a real ledger, real round models.

``open_run`` makes a run folder whose ledger waits for answers: ``round=0`` for the ten random
initial items (no model yet), ``round=1`` for the six items the round-0 model acquired (with its
checkpoint on disk, so the page can show their Grad-CAM). Built with ``RunSession`` and the file
oracle, the way ``xal run --oracle file`` leaves a run, the round-0 answers given through the desk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from xal_cli.session import RunSession
from xal_core.data import PoolStore
from xal_core.loop.data_spec import DataSpec
from xal_core.loop.ledger import Ledger
from xal_core.loop.oracle import AnnotationDesk
from xal_core.loop.protocol import Protocol, TrainRecipe

TINY = dict(size=(32, 32), pool_size=120, val_size=16, test_size=24)
INITIAL, PER_ROUND = 10, 6
TINY_CLI = ["--strategies", "entropy", "--scorer", "inprocess", "--size", "32", "--pool-size", "120",
            "--val-size", "16", "--test-size", "24", "--initial", str(INITIAL), "--rounds", "1", "--per-round",
            str(PER_ROUND), "--epochs", "1", "--architecture", "resnet10", "--batch-size", "8", "--overlay-images", "0",
            "--no-progress"]


def _session(run_dir: Path) -> RunSession:
    protocol = Protocol(strategies=("entropy",), seeds=(0,), initial=INITIAL, rounds=1, per_round=PER_ROUND,
                        train=TrainRecipe(architecture="resnet10", epochs=1, batch_size=8))
    return RunSession(run_dir, protocol, data=DataSpec(**TINY), scorer="inprocess", oracle="file", overlay_images=0,
                      progress=False)


def answer_all_truthfully(run_dir: Path) -> None:
    """Answer every pending item with the pool's own label, through the desk (as the page would)."""
    pool = PoolStore.open(run_dir / "data" / "pool")
    with Ledger.open(run_dir / "ledger.sqlite") as ledger:
        desk = AnnotationDesk(ledger, pool)
        for item in desk.batch():
            if item.answer is None:
                desk.answer(item.item_id, int(pool.oracle_labels([item.item_id])[0]), None, "test")


def build_dicom_run(root: Path, *, ct: bool = False) -> Path:
    """A run on a VinDr-CXR replica (16-bit DICOMs, 96×80) waiting on its four initial items.

    ``ct=True`` relabels every file as CT in Hounsfield units (rescale intercept −1024) with a
    soft-tissue window (W 400, L 40) in place of any VOI LUT: the viewer's presets then apply.
    """
    from xal_core.data.replicas.vindr import write_vindr

    write_vindr(root / "vindr", 24, seed=3)
    if ct:
        import pydicom

        for path in sorted((root / "vindr").rglob("*.dicom")):
            dataset = pydicom.dcmread(path)
            dataset.Modality = "CT"
            dataset.RescaleIntercept, dataset.RescaleSlope, dataset.RescaleType = -1024, 1, "HU"
            if "VOILUTSequence" in dataset:
                del dataset.VOILUTSequence
            dataset.WindowCenter, dataset.WindowWidth = 40, 400
            dataset.WindowCenterWidthExplanation = "SOFT TISSUE"
            dataset.save_as(path)
    protocol = Protocol(strategies=("random",), seeds=(0,), initial=4, rounds=1, per_round=2,
                        train=TrainRecipe(architecture="resnet10", epochs=1, batch_size=4))
    session = RunSession(root / "run", protocol, data=DataSpec("vindr", root / "vindr", size=(32, 32), test_fraction=0.3),
                         scorer="inprocess", oracle="file", overlay_images=0, progress=False)
    assert session.run().needs_labels is not None
    return root / "run"


def build_runs(root: Path) -> dict[int, Path]:
    """``{0: run waiting on round 0, 1: run waiting on round 1}`` under ``root``."""
    first = root / "round0"
    assert _session(first).run().needs_labels is not None
    second = root / "round1"
    shutil.copytree(first, second)
    answer_all_truthfully(second)
    assert _session(second).run().needs_labels is not None
    return {0: first, 1: second}


def fresh_copy(run: Path, destination: Path) -> Path:
    """A copy a test may write to (the module's runs stay as built)."""
    shutil.copytree(run, destination)
    return destination
