"""A ledger written before the ledger module was split into a package (issue 16) reads back and
continues exactly: the split moved code, not the file format.

``fixtures/v1_before_split.sqlite`` was written by the single-module ``xal_core/loop/ledger.py``
(schema 1): two arms, annotations with and without ROIs (boxes, a known-empty ROI, a mask), a
pending item. ``v1_before_split.json`` is what that code read back from it: ``export()``,
``labeled``, ``pending`` and ``last_round`` per arm.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from xal_core.loop.annotations import Annotation
from xal_core.loop.ledger import Arm, Ledger

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _arm(text: str) -> Arm:
    strategy, seed = text.split("/seed=")
    return Arm(strategy, int(seed))


def _read_back(ledger: Ledger) -> dict:
    arms = ledger.arms()
    return {
        "arms": [str(arm) for arm in arms],
        "export": ledger.export(),
        "labeled": {str(arm): {str(item): label for item, label in sorted(ledger.labeled(arm).items())} for arm in arms},
        "pending": {str(arm): ledger.pending(arm) for arm in arms},
        "last_round": {str(arm): ledger.last_round(arm) for arm in arms},
        "run_config": ledger.run_config,
    }


def test_a_ledger_written_before_the_split_reads_back_the_same(tmp_path):
    expected = json.loads((FIXTURES / "v1_before_split.json").read_text())
    path = tmp_path / "ledger.sqlite"
    shutil.copyfile(FIXTURES / "v1_before_split.sqlite", path)
    with Ledger.open(path, readonly=True) as ledger:
        assert json.loads(json.dumps(_read_back(ledger))) == expected


def test_a_ledger_written_before_the_split_takes_new_answers(tmp_path):
    expected = json.loads((FIXTURES / "v1_before_split.json").read_text())
    path = tmp_path / "ledger.sqlite"
    shutil.copyfile(FIXTURES / "v1_before_split.sqlite", path)
    dual = _arm("dual/seed=0")
    with Ledger.open(path, run_config=expected["run_config"]) as ledger:
        (pending,) = ledger.pending(dual)
        ledger.record_annotations(dual, [Annotation(item_id=pending, label=1, label_name="lesion", roi=None,
                                                    annotator="dr-c")])
        assert ledger.pending(dual) == [] and ledger.labeled(dual)[pending] == 1
    with Ledger.open(path, readonly=True) as ledger:  # committed, and the older rows untouched
        again = _read_back(ledger)
    assert again["labeled"]["dual/seed=0"] == {**expected["labeled"]["dual/seed=0"], str(pending): 1}
    assert again["labeled"]["random/seed=1"] == expected["labeled"]["random/seed=1"]
