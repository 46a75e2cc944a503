"""The loop's side of ROI training and stable rounds: which ROIs reach ``fit``, what is recorded,
what ``xal report`` keeps apart, warm starts, and the errors given before any training."""

from __future__ import annotations

import csv

import pytest
import torch

from xal_cli.main import main as xal
from xal_cli.report import merge_runs
from xal_cli.session import RunSession
from xal_core.data import PoolWriter
from xal_core.data.item import Item
from xal_core.data.shortcut import ShortcutBenchmark
from xal_core.loop import learner as learner_module
from xal_core.loop.annotations import Annotation, BoxRoi, MaskRoi
from xal_core.loop.data_spec import DataSpec
from xal_core.loop.experiment import ExperimentData, HeldOut
from xal_core.loop.learner import ActiveLearner
from xal_core.loop.ledger import AcquisitionRow, Arm, Ledger
from xal_core.loop.metrics_file import METRICS_COLUMNS, append_metrics_csv, read_metrics_csv
from xal_core.loop.oracle import SimulatedOracle
from xal_core.loop.protocol import Protocol, TrainRecipe
from xal_core.loop.report.final_table import final_table
from xal_core.loop.scorers import InProcessScorer
from xal_core.loop.training import round_training_set
from xal_core.models import load_checkpoint
from xal_core.train import RoiTraining

ROI_RECIPE = dict(architecture="smallcnn", epochs=1, batch_size=8, roi=RoiTraining(loss="dice", augment="swap"),
                  schedule="cosine", warm_start=True)
SMALL_DATA = DataSpec(size=(32, 32), pool_size=40, val_size=8, test_size=12)


def _protocol(**recipe) -> Protocol:
    return Protocol(strategies=("random",), seeds=(0,), initial=10, rounds=1, per_round=6,
                    train=TrainRecipe(**{**ROI_RECIPE, **recipe}))


def test_new_recipe_fields_are_recorded_only_when_set_and_round_trip():
    default = Protocol().to_dict()["train"]
    assert default == {"architecture": "resnet18", "epochs": 12, "patience": 3, "batch_size": 32, "lr": 1e-3,
                       "val_fraction": 0.2}  # a ledger written before these options resumes unchanged
    recipe = TrainRecipe(**{**ROI_RECIPE, "roi": RoiTraining(loss="dice", weight=0.5, augment="swap",
                                                             swap_source="other", dilate=3)})
    record = Protocol(train=recipe).to_dict()["train"]
    assert record["roi_loss"] == "dice" and record["roi_weight"] == 0.5 and record["warm_start"] is True
    assert "roi_swap_prob" not in record  # at its default
    assert TrainRecipe.from_record(record) == recipe and TrainRecipe.from_record(default) == TrainRecipe()
    assert recipe.label == "dice0.5+swap-other-d3+cosine+warm" and TrainRecipe().label == ""


def test_augmentation_preset_and_width_are_recorded_only_when_set_and_reach_fit_and_the_backbone():
    from xal_core.loop.training import train_config
    from xal_core.train.augment import AUGMENT_PRESETS

    recipe = TrainRecipe(architecture="smallcnn", augment="noflip", smallcnn_width=16)
    record = Protocol(train=recipe).to_dict()["train"]
    assert record["augment"] == "noflip" and record["smallcnn_width"] == 16 and TrainRecipe.from_record(record) == recipe
    assert "augment" not in Protocol().to_dict()["train"] and "smallcnn_width" not in Protocol().to_dict()["train"]
    assert recipe.label == "aug-noflip"
    config = train_config(recipe, seed=0, device="cpu")
    assert config.augment == AUGMENT_PRESETS["noflip"] and config.augment.hflip == 0.0 and config.augment.rotate_deg > 0
    assert train_config(TrainRecipe(augment="none"), seed=0, device="cpu").augment.active is False
    assert recipe.backbone(1, 2).smallcnn_width == 16


def test_bad_augmentation_or_width_is_one_line_before_anything_runs(tmp_path, capsys):
    for argv, message in ((["--augment", "flip"], "augment: expected one of default, noflip, intensity, none, got 'flip'"),
                          (["--architecture", "smallcnn", "--width", "0"], "smallcnn_width must be >= 1")):
        assert xal(["run", "--out", str(tmp_path / "never"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "never").exists()


def test_metrics_csv_names_the_training_only_when_set_and_merges_keep_arms_apart(tmp_path):
    row = {"strategy": "dual", "seed": 0, "round": 0, "labels": 10, **{k: 0.5 for k in METRICS_COLUMNS[4:]}}
    plain, swapped = tmp_path / "plain", tmp_path / "swap"
    append_metrics_csv(plain / "metrics.csv", [row])
    append_metrics_csv(swapped / "metrics.csv", [{**row, "accuracy": 0.9, "training": "swap"}])
    assert (plain / "metrics.csv").read_text().splitlines()[0] == ",".join(METRICS_COLUMNS)
    assert (swapped / "metrics.csv").read_text().splitlines()[0] == ",".join((*METRICS_COLUMNS, "training"))
    assert list(read_metrics_csv(plain / "metrics.csv")[0]) == list(METRICS_COLUMNS)  # older files read as before
    assert read_metrics_csv(swapped / "metrics.csv")[0]["training"] == "swap"
    with pytest.raises(ValueError, match="has no training column"):
        append_metrics_csv(plain / "metrics.csv", [{**row, "training": "swap"}])
    rows, _ = merge_runs([plain, swapped])  # same strategy and seed, trained otherwise: two arms, no clash
    assert {(r.strategy, r.values["accuracy"].mean) for r in final_table(rows)} == {("dual", 0.5), ("dual+swap", 0.9)}
    merged = tmp_path / "merged" / "metrics.csv"
    append_metrics_csv(merged, rows)
    assert [r.get("training") for r in read_metrics_csv(merged)] == ["", "swap"]
    twin = tmp_path / "swap-again"
    append_metrics_csv(twin / "metrics.csv", [{**row, "training": "swap"}])
    with pytest.raises(ValueError, match="'dual\\+swap' seed 0 appears in both"):
        merge_runs([plain, swapped, twin])


def test_training_uses_the_oracles_rois_of_the_rounds_labels(tmp_path):
    """The ROI a round trains with is the one recorded with the label (here not the pool's), and only
    items acquired up to that round count."""
    arm = Arm("random", 0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:3, 2:5] = True
    answers = [(0, BoxRoi(((4.0, 4.0, 6.0, 6.0),))), (1, None), (2, BoxRoi(())), (3, MaskRoi.from_mask(mask))]
    with Ledger.open(tmp_path / "ledger.sqlite", run_config={}) as ledger:
        for round, items in ((0, (0, 1, 2)), (1, (3,))):
            ledger.record_acquisitions(arm, round, [AcquisitionRow(i, f"s{i}", rank) for rank, i in enumerate(items)],
                                       model_version="m")
            ledger.record_annotations(arm, [Annotation(i, i % 2, "c", roi, "dr") for i, roi in answers if i in items])
        first = round_training_set(ledger, arm, 0, (8, 8), with_rois=True)
        second = round_training_set(ledger, arm, 1, (8, 8), with_rois=True)
        assert round_training_set(ledger, arm, 1, (8, 8), with_rois=False).rois is None
    assert first.ids.tolist() == [0, 1, 2] and first.labels.tolist() == [0, 1, 0]
    assert second.ids.tolist() == [0, 1, 2, 3]
    assert int(second.rois[0].sum()) == 4 and second.rois[0, 4:6, 4:6].all()  # pixel centres 4.5, 5.5
    assert not second.rois[1].any() and not second.rois[2].any()  # unknown and known-empty: nothing to use
    assert torch.equal(second.rois[3], mask)


def _pool_without_rois(path) -> ExperimentData:
    source = ShortcutBenchmark((32, 32), n=20, split="pool")
    with PoolWriter(path / "pool", size=(32, 32), channels=1, classes=source.classes, roi_format="mask",
                    source={"kind": "test"}) as writer:
        for index in range(20):
            item = source[index]
            writer.add(Item(item.id, item.image, None, item.label, item.meta))
    test = HeldOut.from_items([source[i] for i in range(4)], (32, 32), 1)
    return ExperimentData(path, path / "pool", source.classes, (32, 32), 1, test, None, {"dataset": "synthetic"})


def test_bad_roi_training_input_is_one_line_before_anything_runs(tmp_path, capsys):
    for argv, message in ((["--roi-weight", "-1", "--roi-loss", "dice"], "roi_weight: expected a finite number >= 0"),
                          (["--roi-weight", "nan", "--roi-loss", "dice"], "roi_weight: expected a finite number"),
                          (["--roi-loss", "gain"], "roi_loss: expected one of none, dice, outside, got 'gain'"),
                          (["--roi-augment", "swap", "--roi-swap-source", "x"], "roi_swap_source: expected one of"),
                          (["--schedule", "step"], "schedule: expected one of constant, cosine")):
        assert xal(["run", "--out", str(tmp_path / "never"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "never").exists()
    data = _pool_without_rois(tmp_path)
    with Ledger.open(tmp_path / "ledger.sqlite", run_config={}) as ledger, InProcessScorer(data.pool_path) as scorer:
        with pytest.raises(ValueError, match="training with ROIs .*dice.* no item of the pool has an ROI"):
            ActiveLearner(tmp_path, _protocol(), data, scorer, SimulatedOracle.from_pool(data.pool_path), ledger)
        ActiveLearner(tmp_path, _protocol(roi=RoiTraining()), data, scorer,
                      SimulatedOracle.from_pool(data.pool_path), ledger)  # plain training needs no ROI


def test_warm_started_roi_run_records_its_training_and_retrains_a_lost_chain_bit_for_bit(tmp_path, monkeypatch):
    starts, ends = [], []
    real_fit = learner_module.fit

    def spy(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        assert kwargs["rois"] is not None and kwargs["rois"].flatten(1).any(1).all()  # every synthetic item has one
        result = real_fit(model, *args, **kwargs)
        ends.append(result.checkpoint.state_dict)
        return result

    monkeypatch.setattr(learner_module, "fit", spy)
    run_dir = tmp_path / "run"
    session = RunSession(run_dir, _protocol(), data=SMALL_DATA, scorer="inprocess", overlay_images=2,
                         progress=False)
    outcome = session.run()
    assert len(starts) == 2  # rounds 0 and 1
    assert all(torch.equal(starts[1][k], ends[0][k]) for k in ends[0])  # round 1 began where round 0 ended
    with open(outcome.metrics, newline="") as handle:
        assert {row["training"] for row in csv.DictReader(handle)} == {"dice+swap+cosine+warm"}
    with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
        assert ledger.run_config["protocol"]["train"]["roi_augment"] == "swap"
    assert (run_dir / "overlays" / "random+dice+swap+cosine+warm.npz").is_file()
    final = load_checkpoint(run_dir / "models" / "random" / "seed-0" / "round-01.pt").state_dict
    for path in (run_dir / "models").rglob("*.pt"):
        path.unlink()  # every checkpoint lost, round 0's included
    (run_dir / "overlays" / "random+dice+swap+cosine+warm.npz").unlink()  # the last round's model is needed again
    RunSession(run_dir, _protocol(), data=SMALL_DATA, scorer="inprocess", overlay_images=2, progress=False).run()
    again = load_checkpoint(run_dir / "models" / "random" / "seed-0" / "round-01.pt").state_dict
    assert len(starts) == 4 and all(torch.equal(again[k], final[k]) for k in final)
