"""``xal run --weight`` (λ) reaches every strategy that fuses U and M, not only ``dual``.

The ledger's run config records λ whatever the strategies are, so a strategy that ignored it would
record one experiment and run another. Two tiny runs of ``dual_rank`` that differ only in λ must
therefore acquire with different scores from the same round-0 model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from xal_cli.run import add_arguments, build_protocol
from xal_cli.session import RunSession
from xal_core.acquisition.strategies import make_strategy
from xal_core.loop.data_spec import DataSpec
from xal_core.loop.ledger import Ledger
from xal_core.loop.protocol import Protocol

# Small enough for a few seconds: a narrow smallcnn, one epoch, one acquisition round, and TorchScript
# (the export format does not change what is scored, and ONNX export is the slow part of a round).
TINY_RUN = ["--initial", "10", "--rounds", "1", "--per-round", "6", "--epochs", "1", "--architecture", "smallcnn",
            "--width", "8", "--batch-size", "8", "--seeds", "1", "--export-format", "torchscript"]
TINY_DATA = dict(size=(32, 32), pool_size=60, val_size=8, test_size=8)


def _protocol(*flags: str) -> Protocol:
    """The protocol ``xal run FLAGS`` builds: the flag's path from the command line, not a hand-made one."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build_protocol(parser.parse_args([*TINY_RUN, *flags]))


def _round_one(run_dir: Path, weight: float) -> tuple[dict, list[tuple[int, float]]]:
    """The run config and the round-1 acquisitions ``(item, score)`` of a ``dual_rank`` run at λ = ``weight``."""
    protocol = _protocol("--strategies", "dual_rank", "--weight", str(weight))
    outcome = RunSession(run_dir, protocol, data=DataSpec(**TINY_DATA), scorer="inprocess", overlay_images=0,
                         progress=False).run()
    assert outcome.needs_labels is None
    with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
        content = ledger.export()
    (arm,) = content["arms"]
    return content["run_config"], [(a["item_id"], a["score"]) for a in arm["acquisitions"] if a["round"] == 1]


@pytest.mark.parametrize("name", ["dual", "dual_rank"])
def test_every_fusing_strategy_is_built_with_the_protocols_weight(name):
    protocol = _protocol("--strategies", name, "--weight", "0.1")
    assert make_strategy(name, **protocol.strategy_params(name)).weight == 0.1


def test_dual_rank_acquires_by_the_weight_the_ledger_records(tmp_path):
    config_low, low = _round_one(tmp_path / "low", 0.1)
    config_high, high = _round_one(tmp_path / "high", 0.9)
    assert config_low["protocol"]["weight"] == 0.1 and config_high["protocol"]["weight"] == 0.9
    assert len(low) == len(high) == 6
    assert [score for _, score in low] != [score for _, score in high], "λ did not change dual_rank's scores"
