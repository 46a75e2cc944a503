"""The active-learning loop end to end on a tiny synthetic benchmark, with real parts throughout.

Real pool stores, real SQLite ledgers, real ONNX exports scored by ONNX Runtime, a real ``xal
serve`` process over a socket for the service scorer, real ``kill -9`` of a running ``xal run``.
Models are tiny (ResNet-10, 32×32, one epoch) so the whole module runs in about a minute; what is
checked is bookkeeping and determinism, not accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xal_cli.session import RunSession
from xal_core.acquisition.strategies import NoRoiWarning
from xal_core.data import PoolStore, PoolWriter
from xal_core.data.item import Item
from xal_core.data.shortcut import ShortcutBenchmark
from xal_core.loop.data_spec import DataSpec
from xal_core.loop.experiment import ExperimentData, HeldOut
from xal_core.loop.learner import ActiveLearner
from xal_core.loop.ledger import Ledger
from xal_core.loop.metrics_file import METRICS_COLUMNS
from xal_core.loop.oracle import SimulatedOracle
from xal_core.loop.protocol import Protocol, TrainRecipe
from xal_core.loop.scorers import InProcessScorer
from xal_core.scoring.parameters import ScoringConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(size=(32, 32), pool_size=120, val_size=16, test_size=24)
TINY_CLI = ["--size", "32", "--pool-size", "120", "--val-size", "16", "--test-size", "24", "--initial", "10",
            "--rounds", "2", "--per-round", "6", "--epochs", "1", "--architecture", "resnet10", "--batch-size", "8",
            "--overlay-images", "2", "--no-progress"]


def tiny_protocol(strategies=("random", "entropy", "dual"), rounds=2, **changes) -> Protocol:
    return Protocol(strategies=strategies, seeds=(0,), initial=10, rounds=rounds, per_round=6,
                    train=TrainRecipe(architecture="resnet10", epochs=1, batch_size=8), **changes)


def run_session(run_dir: Path, *, scorer: str = "inprocess", oracle: str = "simulated", **protocol) -> object:
    session = RunSession(run_dir, tiny_protocol(**protocol), data=DataSpec(**TINY), scorer=scorer, oracle=oracle,
                         overlay_images=2, progress=False)
    return session.run()


def export(run_dir: Path) -> dict:
    with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
        return ledger.export()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted in-process run: the ledger every other run must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference")
    outcome = run_session(run_dir)
    assert outcome.needs_labels is None
    return run_dir


def test_a_run_records_every_round_of_every_arm(reference):
    rows = list(csv.DictReader((reference / "metrics.csv").open()))
    assert tuple(rows[0]) == METRICS_COLUMNS
    assert [(r["strategy"], int(r["round"]), int(r["labels"])) for r in rows] == [
        (s, r, 10 + 6 * r) for s in ("random", "entropy", "dual") for r in range(3)]
    content = export(reference)
    initial = {arm["strategy"]: [a["item_id"] for a in arm["acquisitions"] if a["round"] == 0]
               for arm in content["arms"]}
    assert initial["random"] == initial["entropy"] == initial["dual"]  # one seed, one initial set
    for arm in content["arms"]:
        items = [a["item_id"] for a in arm["acquisitions"]]
        assert len(items) == len(set(items)) == 22, f"{arm['strategy']}: an item acquired twice"
        assert arm["pending"] == []
        assert [a["round"] for a in arm["acquisitions"]] == [0] * 10 + [1] * 6 + [2] * 6
        scored = [a for a in arm["acquisitions"] if a["round"] > 0]  # selected by a model's scores
        assert all(a["pointing_hit"] in (0.0, 1.0) and a["dice"] is not None for a in scored), arm["strategy"]
    # round 0 trains on the same labels from the same weights: every strategy's metrics agree
    first = {r["strategy"]: tuple(r[k] for k in METRICS_COLUMNS[3:]) for r in rows if r["round"] == "0"}
    assert len(set(first.values())) == 1
    labels = {a["item_id"]: a["label"] for a in content["annotations"]}
    truth = PoolStore.open(reference / "data" / "pool").oracle_labels(sorted(labels)).tolist()
    assert [labels[i] for i in sorted(labels)] == truth
    assert (reference / "report.html").is_file()
    assert sorted(p.stem for p in (reference / "overlays").glob("*.npz")) == ["dual", "entropy", "random"]


def test_service_scorer_run_records_the_same_ledger(reference, tmp_path):
    """Through a real `xal serve` process the rankings, hence the whole ledger, are identical."""
    outcome = run_session(tmp_path, scorer="service")
    assert outcome.needs_labels is None
    assert (tmp_path / "service" / "server.json").is_file()
    assert export(tmp_path) == export(reference)


def _xal_run(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xal_cli.main", "run", "--out", str(run_dir),
                             "--scorer", "inprocess", *TINY_CLI], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _ledger_progress(run_dir: Path) -> tuple[int, int, int]:
    """(acquisitions, annotations, rounds) committed so far, read like a dashboard would."""
    path = run_dir / "ledger.sqlite"
    if not path.is_file():
        return 0, 0, 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        counts = tuple(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                       for table in ("acquisitions", "annotations", "rounds"))
        db.close()
        return counts  # type: ignore[return-value]
    except sqlite3.Error:
        return 0, 0, 0


@pytest.mark.parametrize("kill_after", [
    (10, 0, 0),   # initial labels of the first arm recorded, not yet annotated (or mid-annotation)
    (16, 16, 1),  # first arm: round-1 acquisitions annotated, training round 1
    (38, 0, 4),   # second arm under way (annotations are per item: the arms share theirs)
])
def test_killed_and_restarted_run_ends_with_the_same_ledger(reference, tmp_path, kill_after):
    run_dir = tmp_path / "run"
    process = _xal_run(run_dir)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if all(got >= want for got, want in zip(_ledger_progress(run_dir), kill_after, strict=True)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before the kill point: " + process.stdout.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    restarted = _xal_run(run_dir)
    output = restarted.communicate(timeout=300)[0].decode()
    assert restarted.returncode == 0, output[-3000:]
    assert export(run_dir) == export(reference)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 9 and "report:" in output


def test_file_oracle_waits_for_a_person_and_keeps_valid_lines(tmp_path):
    session_args = dict(strategies=("entropy",), rounds=1)
    outcome = run_session(tmp_path, oracle="file", **session_args)
    sheet = tmp_path / "to_label.csv"
    assert outcome.needs_labels is not None and str(sheet) in outcome.needs_labels
    pool = PoolStore.open(tmp_path / "data" / "pool")

    def fill(bad_lines: bool) -> list[int]:
        lines = sheet.read_text().splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("item_id"))
        rows = list(csv.DictReader(lines[header:]))
        ids = [int(r["item_id"]) for r in rows if not r["label"]]
        labels = pool.oracle_labels(ids).tolist()
        with sheet.open("w") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                if not row["label"]:
                    row["label"] = pool.classes[labels[ids.index(int(row["item_id"]))]]
                    row["annotator"] = "dr-test"
                writer.writerow(row)
            if bad_lines:  # an id outside the pool, and a known item that was not asked for with a bad label
                other = next(i for i in range(len(pool)) if i not in ids)
                out.write("99999,x,class_0,dr-test,\n")
                out.write(f"{other},{pool.source_ids([other])[0]},not-a-class,dr-test,\n")
        return ids

    first = fill(bad_lines=True)
    assert len(first) == 10
    outcome = run_session(tmp_path, oracle="file", **session_args)
    assert outcome.needs_labels is not None  # the round-1 acquisitions now wait
    rejected = (tmp_path / "to_label.csv.rejected.tsv").read_text()
    assert "99999" in rejected and "not-a-class" in rejected
    second = fill(bad_lines=False)
    assert len(second) == 6 and not set(first) & set(second)
    outcome = run_session(tmp_path, oracle="file", **session_args)
    assert outcome.needs_labels is None and outcome.report is not None
    content = export(tmp_path)
    assert {a["annotator"] for a in content["annotations"]} == {"dr-test"}
    assert len(content["annotations"]) == 16


def _pool_without_rois(path: Path, n: int = 40) -> ExperimentData:
    source = ShortcutBenchmark((32, 32), n=n, split="pool")
    with PoolWriter(path / "pool", size=(32, 32), channels=1, classes=source.classes, roi_format="mask",
                    source={"kind": "test"}) as writer:
        for index in range(n):
            item = source[index]
            writer.add(Item(item.id, item.image, None, item.label, item.meta))
    test = HeldOut.from_items([source[i] for i in range(8)], (32, 32), 1)
    return ExperimentData(path, path / "pool", source.classes, (32, 32), 1, test, None, {"dataset": "synthetic"})


def test_a_pool_without_rois_is_reported_at_start(tmp_path):
    data = _pool_without_rois(tmp_path)
    oracle = SimulatedOracle.from_pool(data.pool_path)
    with Ledger.open(tmp_path / "ledger.sqlite", run_config={}) as ledger, InProcessScorer(data.pool_path) as scorer:
        with pytest.warns(NoRoiWarning, match="no item of the pool has an ROI.*uncertainty alone"):
            ActiveLearner(tmp_path, tiny_protocol(strategies=("random", "dual"), rounds=1), data, scorer, oracle,
                          ledger)
        with pytest.raises(ValueError, match="no item of the pool has an ROI.*'exclude'"):
            ActiveLearner(tmp_path, tiny_protocol(strategies=("dual",), scoring=ScoringConfig(missing_roi="exclude")), data, scorer, oracle,
                          ledger)


def test_a_corrupt_ledger_stops_the_run_untouched(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    garbage = np.random.default_rng(5).bytes(4096)
    (run_dir / "ledger.sqlite").write_bytes(garbage)
    done = subprocess.run([sys.executable, "-m", "xal_cli.main", "run", "--out", str(run_dir),
                           "--scorer", "inprocess", *TINY_CLI], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert str(run_dir / "ledger.sqlite") in done.stderr and "NOT modified" in done.stderr
    assert (run_dir / "ledger.sqlite").read_bytes() == garbage
    assert not (run_dir / "metrics.csv").exists()


def test_protocol_rejects_bad_settings():
    with pytest.raises(ValueError, match="strategies"):
        tiny_protocol(strategies=("random", "oracle"))
    with pytest.raises(ValueError, match="weight"):
        tiny_protocol(scoring=ScoringConfig(weight=1.5))
    with pytest.raises(ValueError, match="architecture"):
        TrainRecipe(architecture="vgg")
    assert Protocol().budget == 570 and json.dumps(Protocol().to_dict())
    with pytest.raises(ValueError, match="ResNets only"):
        TrainRecipe(architecture="densenet121", output_stride=16)


def test_output_stride_is_recorded_only_when_it_changes_the_experiment():
    """Ledgers written before ``output_stride`` existed hold no such key and must still resume."""
    assert "output_stride" not in Protocol().to_dict()["train"]
    assert Protocol(train=TrainRecipe(output_stride=16)).to_dict()["train"]["output_stride"] == 16


def test_experiment_data_is_reused_and_pinned(tmp_path):
    from xal_core.loop.experiment import prepare_data

    first = prepare_data(tmp_path / "data", DataSpec("synthetic", **TINY))
    again = prepare_data(tmp_path / "data", DataSpec("synthetic", **TINY))
    assert torch.equal(first.test.images, again.test.images) and len(again.pool) == 120
    with pytest.raises(ValueError, match="another configuration"):
        prepare_data(tmp_path / "data", DataSpec("synthetic", **{**TINY, "pool_size": 121}))
    with pytest.raises(ValueError, match="needs --data-dir"):
        prepare_data(tmp_path / "other", DataSpec("brats"))
