"""The loop supplies what BALD and k-center read: MC-dropout passes and pooled embeddings.

Unit tests of the last-layer MC dropout and of what the protocol records, then tiny runs of the
whole loop (real pool stores, ledgers, ONNX exports scored by ONNX Runtime, a real ``xal serve``
process) that complete an acquisition round with ``bald`` and with ``--diversity kcenter``.
Sizes are those of ``test_learner.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xal_cli.session import RunSession
from xal_core.loop.data_spec import DataSpec
from xal_core.loop.extras import ExtrasCollector, McDropout, TableExtras, check_runnable, extras_for, needed_columns
from xal_core.loop.ledger import Arm, Ledger
from xal_core.loop.protocol import Protocol, TrainRecipe

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(size=(32, 32), pool_size=120, val_size=16, test_size=24)
TINY_CLI = ["--size", "32", "--pool-size", "120", "--val-size", "16", "--test-size", "24", "--initial", "10",
            "--rounds", "1", "--per-round", "6", "--epochs", "1", "--architecture", "resnet10", "--batch-size", "8",
            "--overlay-images", "0", "--no-progress", "--scorer", "inprocess"]


def tiny_protocol(strategies: tuple[str, ...], **changes) -> Protocol:
    return Protocol(strategies=strategies, seeds=(0,), initial=10, rounds=1, per_round=6,
                    train=TrainRecipe(architecture="resnet10", epochs=1, batch_size=8), **changes)


def head(features: int = 5, classes: int = 3, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(features, classes)


# ---------------------------------------------------------------------- last-layer MC dropout
def test_mc_passes_apply_inverted_dropout_to_the_pooled_features():
    linear = head()
    mc = McDropout.from_linear(linear, passes=4, p=0.25, seed=9)
    ids = np.array([3, 10])
    embeddings = np.random.default_rng(0).normal(size=(2, 5))
    passes = mc.probabilities(ids, embeddings)
    assert passes.shape == (4, 2, 3)
    np.testing.assert_allclose(passes.sum(axis=2), 1.0, atol=1e-12)
    for row, item in enumerate(ids):
        masks = mc.masks(item)
        assert masks.shape == (4, 5) and masks.dtype == bool
        x = torch.from_numpy(masks * embeddings[row] / 0.75)
        expected = torch.softmax(linear.double()(x), dim=1).detach().numpy()
        np.testing.assert_allclose(passes[:, row], expected, atol=1e-12)


def test_an_items_masks_depend_on_seed_and_item_only():
    mc = McDropout.from_linear(head(16), passes=6, p=0.5, seed=1)
    embeddings = np.random.default_rng(1).normal(size=(3, 16))
    together = mc.probabilities(np.array([4, 7, 9]), embeddings)
    alone = mc.probabilities(np.array([7]), embeddings[1:2])  # another chunking / other exclusions
    np.testing.assert_array_equal(together[:, 1:2], alone)
    assert not np.array_equal(mc.masks(4), mc.masks(7))
    other_seed = McDropout.from_linear(head(16), passes=6, p=0.5, seed=2)
    assert not np.array_equal(mc.masks(4), other_seed.masks(4))
    kept = np.mean([mc.masks(i).mean() for i in range(200)])
    assert abs(kept - 0.5) < 0.02  # Bernoulli(1 - p)


def test_no_dropout_gives_the_models_prediction_in_every_pass():
    linear = head()
    embeddings = np.random.default_rng(2).normal(size=(4, 5))
    passes = McDropout.from_linear(linear, passes=3, p=0.0, seed=0).probabilities(np.arange(4), embeddings)
    expected = torch.softmax(linear.double()(torch.from_numpy(embeddings)), dim=1).detach().numpy()
    for passed in passes:
        np.testing.assert_allclose(passed, expected, atol=1e-12)


def test_bad_mc_settings_are_refused():
    linear = head()
    with pytest.raises(ValueError, match="mc_dropout"):
        McDropout.from_linear(linear, passes=2, p=1.0, seed=0)
    with pytest.raises(ValueError, match="mc_passes"):
        McDropout.from_linear(linear, passes=0, p=0.5, seed=0)
    with pytest.raises(ValueError, match="mc_passes: expected an integer >= 2"):
        tiny_protocol(("bald",), mc_passes=1)
    with pytest.raises(ValueError, match=r"mc_dropout: expected a drop probability in \[0, 1\)"):
        tiny_protocol(("bald",), mc_dropout=1.0)


def test_the_collector_keeps_unlabeled_rows_and_sorts_them_by_id():
    linear = head(features=2, classes=2)
    mc = McDropout.from_linear(linear, passes=2, p=0.5, seed=3)
    collector = ExtrasCollector(TableExtras(embeddings=True, mc_dropout=mc))
    for ids in (np.array([4, 5, 6]), np.array([0, 1, 2])):  # chunks in any order
        features = torch.from_numpy(np.stack([np.full((2, 2, 2), i, dtype=np.float32) for i in ids]))
        logits = linear(features.mean(dim=(2, 3)))
        collector.add(torch.from_numpy(ids), logits, features, ids != 5)
    columns = collector.columns(np.array([0, 1, 2, 4, 6]))
    np.testing.assert_array_equal(columns["embeddings"][:, 0], [0, 1, 2, 4, 6])
    assert columns["mc_probabilities"].shape == (2, 5, 2)
    with pytest.raises(RuntimeError, match="extra columns"):
        collector.columns(np.array([0, 1, 2, 4, 5]))


# ---------------------------------------------------------------------- what the protocol asks and records
def test_extras_are_asked_only_by_the_arms_that_read_them():
    protocol = tiny_protocol(("random", "entropy", "bald"), diversity="kcenter")
    assert needed_columns(protocol, "random") == (False, False)  # diversity never wraps random
    assert needed_columns(protocol, "entropy") == (True, False)
    assert needed_columns(protocol, "bald") == (True, True)
    assert not extras_for(tiny_protocol(("entropy",)), "entropy", 0, 1, head())
    bald = extras_for(tiny_protocol(("bald",), mc_passes=5, mc_dropout=0.2), "bald", 0, 1, head())
    assert not bald.embeddings and (bald.mc_dropout.passes, bald.mc_dropout.p) == (5, 0.2)
    assert bald.mc_dropout.seed != extras_for(tiny_protocol(("bald",)), "bald", 0, 2, head()).mc_dropout.seed


def test_mc_settings_are_recorded_only_when_bald_runs_with_other_values():
    """Records written before these settings existed (or without BALD) hold no such keys and resume."""
    for protocol in (Protocol(), tiny_protocol(("bald",)), tiny_protocol(("entropy",), mc_passes=5)):
        assert "mc_passes" not in protocol.to_dict() and "mc_dropout" not in protocol.to_dict()
    recorded = tiny_protocol(("bald",), mc_passes=5).to_dict()
    assert recorded["mc_passes"] == 5 and "mc_dropout" not in recorded
    assert tiny_protocol(("bald",), mc_dropout=0.1).to_dict()["mc_dropout"] == 0.1


def test_a_strategy_the_loop_cannot_feed_is_refused_naming_the_option():
    starved = lambda protocol, name: (False, False)  # noqa: E731 - a loop that supplies no extra column
    with pytest.raises(ValueError, match=r"^--strategies bald: the loop cannot supply what it needs \(bald: "):
        check_runnable(tiny_protocol(("bald",)), supplied=starved)
    with pytest.raises(ValueError, match=r"^--diversity kcenter \(with --strategies entropy\): .*embeddings"):
        check_runnable(tiny_protocol(("entropy",), diversity="kcenter"), supplied=starved)
    check_runnable(tiny_protocol(("random",), diversity="kcenter"), supplied=starved)  # random ignores it
    for strategy in ("random", "entropy", "margin", "least_confidence", "bald", "misalignment", "dual", "dual_rank"):
        for diversity in (None, "power", "softrank", "kcenter"):
            tiny_protocol((strategy,), diversity=diversity)  # what the loop supplies: all of them run


def test_xal_run_refuses_bad_mc_settings_before_preparing_anything(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xal_cli.main", "run", "--out", str(tmp_path / "run"),
                           "--strategies", "bald", "--mc-passes", "1", *TINY_CLI], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "xal run: error: mc_passes: expected an integer >= 2 (BALD compares passes), got 1"]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- whole runs
def acquired(run_dir: Path, strategy: str, round: int) -> list[int]:
    with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
        return [record.row.item_id for record in ledger.acquisitions(Arm(strategy, 0), round=round)]


def export(run_dir: Path) -> dict:
    with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
        return ledger.export()


def test_a_bald_run_acquires_and_both_scorers_record_the_same_ledger(tmp_path):
    ledgers = []
    for scorer in ("inprocess", "service"):
        session = RunSession(tmp_path / scorer, tiny_protocol(("bald",), mc_passes=8), data=DataSpec(**TINY),
                             scorer=scorer, overlay_images=0, progress=False)
        outcome = session.run()
        assert outcome.needs_labels is None and len(outcome.rows) == 2
        ledgers.append(export(tmp_path / scorer))
    assert len(acquired(tmp_path / "inprocess", "bald", 1)) == 6
    assert ledgers[0] == ledgers[1]  # same masks (seed, round), same passes, same acquisition


def test_a_kcenter_run_through_the_cli_acquires(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "xal_cli.main", "run", "--out", str(run_dir), "--strategies",
                           "entropy", "--diversity", "kcenter", *TINY_CLI], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    chosen = acquired(run_dir, "entropy", 1)
    assert len(chosen) == len(set(chosen)) == 6 and not set(chosen) & set(acquired(run_dir, "entropy", 0))
