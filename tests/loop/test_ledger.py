"""The SQLite ledger: real files in tmp_path, WAL, round trips, conflicts, kill -9, corrupt files."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xal_core.loop.annotations import Annotation, BoxRoi, MaskRoi
from xal_core.loop.ledger import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    AcquisitionRow,
    Arm,
    Ledger,
    LedgerConflict,
    LedgerError,
    acquisition_rows,
)

CONFIG = {"dataset": {"kind": "synthetic", "n": 100}, "k": 3, "strategies": ["random", "dual"]}
RANDOM, DUAL = Arm("random", 0), Arm("dual", 0)


def rows(items, **scores):
    return [AcquisitionRow(item, f"src-{item}", rank, **scores) for rank, item in enumerate(items)]


def answer(item, label=1, roi=None, annotator="dr-a"):
    return Annotation(item, label, ["healthy", "lesion"][label], roi, annotator)


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(tmp_path / "ledger.sqlite", run_config=CONFIG) as opened:
        yield opened


def test_a_new_ledger_is_wal_fsynced_versioned_and_describes_itself(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, run_config=CONFIG) as ledger:
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert ledger._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        meta = ledger.meta
        assert ledger.run_config == json.loads(json.dumps(CONFIG))
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert raw.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1
    raw.close()
    assert meta["format"] == "xal-ledger" and meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["xal_version"] and meta["created_at"].endswith("+00:00")
    assert not list(tmp_path.glob(".ledger.sqlite.creating-*"))  # built aside, linked into place
    with Ledger.open(path, run_config=CONFIG) as again:
        assert again._session == 2


def test_round_trip_acquisitions_annotations_rounds(ledger, tmp_path):
    mask = np.zeros((5, 11), dtype=bool)
    mask[1:3, 4:10] = True
    nan = float("nan")
    ledger.record_acquisitions(DUAL, 0, rows([7, 2, 9]), "init")
    ledger.record_acquisitions(DUAL, 1, [
        AcquisitionRow(4, "src-4", 1, score=0.5, uncertainty=0.25, dice=nan, soft_dice=None, predicted_class=1,
                       probabilities=(0.3, 0.7), extra={"bald": 0.1, "gap": nan}),
        AcquisitionRow(5, "src-5", 0, score=0.9, uncertainty=0.75, dice=0.5, soft_dice=0.4, roi_energy=0.2,
                       pointing_hit=1.0),
    ], "model-r1")
    assert ledger.pending(DUAL) == [7, 2, 9, 5, 4]
    ledger.record_annotations(DUAL, [
        answer(2, 0, BoxRoi(())), answer(7, 1, BoxRoi(((1, 2, 3.5, 4),))), answer(9, 1, MaskRoi.from_mask(mask)),
        answer(5, 0),
    ])
    ledger.record_round(DUAL, 0, 3, {"accuracy": 0.75, "auroc": nan}, "model-r0")
    assert ledger.pending(DUAL) == [4]
    assert ledger.labeled(DUAL) == {7: 1, 2: 0, 9: 1, 5: 0} and list(ledger.labeled(DUAL)) == [7, 2, 9, 5]
    got = {a.item_id: a for a in ledger.annotations(DUAL)}
    assert got[2].roi == BoxRoi(()) and got[5].roi is None
    assert got[7].roi.boxes == ((1.0, 2.0, 3.5, 4.0),)
    assert np.array_equal(got[9].roi.to_mask().numpy(), mask) and got[9].label_name == "lesion"
    assert ledger.annotation(9) == got[9] and ledger.annotation(4) is None
    records = ledger.acquisitions(DUAL, 1)
    assert [r.row.item_id for r in records] == [5, 4] and records[0].model_version == "model-r1"
    first = records[1].row
    assert first.score == 0.5 and math.isnan(first.dice) and math.isnan(first.soft_dice)
    assert first.probabilities == (0.3, 0.7) and first.predicted_class == 1
    assert first.extra["bald"] == 0.1 and math.isnan(first.extra["gap"])
    raw = ledger._db.execute("SELECT dice, soft_dice FROM acquisitions WHERE item_id = 4").fetchone()
    assert raw == (None, None)  # NaN is stored as NULL
    (record,) = ledger.rounds(DUAL)
    assert (record.round, record.labels, record.model_version) == (0, 3, "model-r0")
    assert record.metrics["accuracy"] == 0.75 and math.isnan(record.metrics["auroc"])
    assert ledger.last_round(DUAL) == 0 and ledger.last_round(RANDOM) is None
    assert ledger.arms() == [DUAL] and ledger.pending(RANDOM) == [] and ledger.labeled(RANDOM) == {}
    export = ledger.export()
    json.dumps(export, allow_nan=False)  # None for NaN: two exports compare with ==
    ledger.close()
    with Ledger.open(tmp_path / "ledger.sqlite", run_config=CONFIG) as again:
        assert again.export() == export
        assert again.labeled(DUAL) == {7: 1, 2: 0, 9: 1, 5: 0}


def test_acquisitions_are_idempotent_and_never_replaced(ledger):
    ledger.record_acquisitions(DUAL, 0, rows([1, 2, 3]), "init")
    ledger.record_acquisitions(DUAL, 0, rows([1, 2, 3], score=0.4), "init-again")  # same items: quiet
    assert all(math.isnan(r.row.score) for r in ledger.acquisitions(DUAL))
    assert {r.model_version for r in ledger.acquisitions(DUAL)} == {"init"}  # first record kept
    with pytest.raises(LedgerConflict, match=r"round 0 already acquired items \[1, 2, 3\]"):
        ledger.record_acquisitions(DUAL, 0, rows([1, 2, 4]), "init")
    with pytest.raises(LedgerConflict, match=r"already acquired item\(s\) 2 \(round 0\)"):
        ledger.record_acquisitions(DUAL, 1, rows([5, 2]), "m1")
    ledger.record_acquisitions(DUAL, 2, rows([6]), "m2")
    with pytest.raises(LedgerConflict, match="cannot record round 1 after it"):
        ledger.record_acquisitions(DUAL, 1, rows([7]), "m1")
    with pytest.raises(LedgerConflict, match="source id 'src-1', now 'other': the pool changed"):
        ledger.record_acquisitions(RANDOM, 0, [AcquisitionRow(1, "other", 0)], "init")
    with pytest.raises(ValueError, match="ranks must be 0..1"):
        ledger.record_acquisitions(DUAL, 3, [AcquisitionRow(8, "s", 0), AcquisitionRow(9, "s", 2)], "m3")
    with pytest.raises(ValueError, match=r"more than once: \[8\]"):
        ledger.record_acquisitions(DUAL, 3, [AcquisitionRow(8, "s", 0), AcquisitionRow(8, "s", 1)], "m3")
    with pytest.raises(ValueError, match="no acquisitions"):
        ledger.record_acquisitions(DUAL, 3, [], "m3")
    assert ledger.pending(DUAL) == [1, 2, 3, 6] and ledger.pending(RANDOM) == []


def test_an_expert_label_is_never_overwritten(ledger):
    ledger.record_acquisitions(DUAL, 0, rows([1, 2, 3]), "init")
    first = answer(1, 1, BoxRoi(((0, 0, 2, 2),)), annotator="dr-a")
    ledger.record_annotations(DUAL, [first])
    ledger.record_annotations(DUAL, [answer(1, 1, BoxRoi(((0, 0, 2, 2),)), annotator="dr-b")])  # same answer: quiet
    assert ledger.annotation(1).annotator == "dr-a"
    with pytest.raises(LedgerConflict, match=r"item 1 is already annotated as label 1 \('lesion'\).*never overwritten"):
        ledger.record_annotations(DUAL, [answer(2, 0), answer(1, 0)])
    assert ledger.pending(DUAL) == [2, 3]  # the call wrote nothing, not even item 2
    with pytest.raises(LedgerConflict, match="item 1 is already annotated"):
        ledger.record_annotations(DUAL, [answer(1, 1, BoxRoi(((0, 0, 3, 3),)))])  # another ROI is another answer
    with pytest.raises(LedgerConflict, match=r"did not acquire item\(s\) \[42\]"):
        ledger.record_annotations(DUAL, [answer(42)])
    with pytest.raises(LedgerConflict, match=r"did not acquire item\(s\) \[1\]"):
        ledger.record_annotations(RANDOM, [answer(1)])
    with pytest.raises(LedgerConflict, match="two different answers for item 3"):
        ledger.record_annotations(DUAL, [answer(3, 0), answer(3, 1)])
    ledger.record_annotations(DUAL, [])
    assert ledger.labeled(DUAL) == {1: 1}


def test_a_label_serves_every_arm_and_is_asked_once(ledger):
    ledger.record_acquisitions(RANDOM, 0, rows([1, 2, 3]), "init")
    ledger.record_annotations(RANDOM, [answer(1, 0), answer(2, 1), answer(3, 1)])
    ledger.record_acquisitions(DUAL, 0, rows([3, 4]), "init")
    assert ledger.pending(DUAL) == [4]  # item 3 was answered for the other arm
    assert ledger.labeled(DUAL) == {3: 1}
    ledger.record_annotations(DUAL, [answer(3, 1)])  # repeating it is harmless
    with pytest.raises(LedgerConflict):
        ledger.record_annotations(DUAL, [answer(3, 0)])
    assert ledger.arms() == [RANDOM, DUAL]
    assert [arm["strategy"] for arm in ledger.export()["arms"]] == ["dual", "random"]  # sorted, not by creation


def test_round_records_are_idempotent(ledger):
    ledger.record_round(DUAL, 0, 50, {"accuracy": 0.5}, "m0")
    ledger.record_round(DUAL, 0, 50, {"accuracy": 0.5}, "m0")
    with pytest.raises(LedgerConflict, match="round 0 is already recorded"):
        ledger.record_round(DUAL, 0, 50, {"accuracy": 0.6}, "m0")
    ledger.record_round(DUAL, 1, 53, {"loss": float("inf")}, "m1")
    assert [r.round for r in ledger.rounds(DUAL)] == [0, 1] and ledger.last_round(DUAL) == 1
    assert math.isnan(ledger.rounds(DUAL)[1].metrics["loss"])  # JSON has no inf: stored as null
    with pytest.raises(ValueError, match="round must be"):
        ledger.record_round(DUAL, -1, 1, {}, "m")
    with pytest.raises(ValueError, match="metrics"):
        ledger.record_round(DUAL, 2, 1, {"accuracy": "high"}, "m")


def test_run_config_mismatch_lists_the_keys_and_leaves_the_file(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path, run_config=CONFIG).close()
    before = path.read_bytes()
    other = {**CONFIG, "k": 5, "dataset": {"kind": "synthetic", "n": 200}, "extra": True}
    with pytest.raises(LedgerError) as caught:
        Ledger.open(path, run_config=other)
    message = str(caught.value)
    assert str(path) in message and "NOT modified" in message
    assert "k: ledger 3, now 5" in message and "dataset.n: ledger 100, now 200" in message
    assert "extra: ledger (absent), now true" in message and "strategies" not in message
    assert path.read_bytes() == before
    with Ledger.open(path, run_config=json.loads(json.dumps(CONFIG))):  # same content, other key order
        pass
    with Ledger.open(path):  # no config given: not checked
        pass


def test_one_writer_many_readers(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, run_config=CONFIG) as writer:
        writer.record_acquisitions(DUAL, 0, rows([1, 2]), "init")
        with pytest.raises(LedgerError, match="another writer holds it"):
            Ledger.open(path, run_config=CONFIG)
        with Ledger.open(path, readonly=True) as reader:
            assert reader.pending(DUAL) == [1, 2]
            writer.record_annotations(DUAL, [answer(1)])
            assert reader.pending(DUAL) == [2]  # sees each commit
            with pytest.raises(LedgerError, match="read-only"):
                reader.record_annotations(DUAL, [answer(2)])
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger.open(tmp_path / "absent.sqlite", readonly=True)


def test_backup_is_a_consistent_copy_and_never_overwrites(ledger, tmp_path):
    ledger.record_acquisitions(DUAL, 0, rows([1, 2]), "init")
    ledger.record_annotations(DUAL, [answer(2)])
    ledger.backup(tmp_path / "copy.sqlite")
    with pytest.raises(FileExistsError):
        ledger.backup(tmp_path / "copy.sqlite")
    ledger.record_annotations(DUAL, [answer(1)])
    ledger.backup(tmp_path / "copy.sqlite", replace=True)
    assert sorted(p.name for p in tmp_path.iterdir() if "copy" in p.name) == ["copy.sqlite"]
    with Ledger.open(tmp_path / "copy.sqlite", readonly=True) as copy:
        assert copy.export() == ledger.export() and copy.labeled(DUAL) == {1: 1, 2: 1}
    with pytest.raises(ValueError, match="the ledger itself"):
        ledger.backup(ledger.path, replace=True)


def test_rows_from_a_pool_ranking_keep_the_scores_at_selection_time(ledger):
    import torch

    from xal_core.acquisition import PoolRanking
    from xal_core.scoring import Selection

    columns = {"uncertainty": torch.tensor([0.9, 0.4]), "dice": torch.tensor([float("nan"), 0.25]),
               "soft_dice": torch.tensor([0.0, 0.5]), "roi_energy": torch.tensor([0.1, 0.2]),
               "pointing_hit": torch.tensor([0.0, 1.0]), "predicted_class": torch.tensor([1, 0]),
               "probabilities": torch.tensor([[0.25, 0.75], [0.5, 0.5]]), "bald": torch.tensor([0.3, 0.1])}
    ranking = PoolRanking(Selection(torch.tensor([17, 4]), torch.tensor([0.8, 0.6], dtype=torch.float64)), columns)
    made = acquisition_rows(ranking, ["case-17", "case-4"])
    assert [(r.item_id, r.source_id, r.rank, r.score) for r in made] == [(17, "case-17", 0, 0.8), (4, "case-4", 1, 0.6)]
    assert made[0].probabilities == (0.25, 0.75) and made[0].predicted_class == 1 and made[0].extra == {
        "bald": pytest.approx(0.3)}
    ledger.record_acquisitions(DUAL, 1, made, "m1")
    (first, second) = ledger.acquisitions(DUAL, 1)
    assert math.isnan(first.row.dice) and second.row.dice == 0.25 and second.row.pointing_hit == 1.0


# ---------------------------------------------------------------------------------------- bad files
def _truncated(path: Path) -> None:
    _filled(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_page(path: Path) -> None:
    _filled(path)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):  # every b-tree page header but the first page's
        data[start: start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def _filled(path: Path) -> None:
    with Ledger.open(path, run_config=CONFIG) as ledger:
        for round in range(12):
            items = range(round * 10, round * 10 + 10)
            ledger.record_acquisitions(DUAL, round, rows(items, score=0.5), f"m{round}")
            ledger.record_annotations(DUAL, [answer(i, i % 2) for i in items])
    for leftover in path.parent.glob(path.name + "?*"):
        leftover.unlink()


def _newer(path: Path) -> None:
    Ledger.open(path, run_config=CONFIG).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    raw.commit()
    raw.close()


def _foreign(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE notes (text TEXT)")
    raw.commit()
    raw.close()


BAD_FILES = {
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(8192)), "not an SQLite database"),
    "text file": (lambda p: p.write_text("item_id,label\n1,lesion\n"), "not an SQLite database"),
    "empty file": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated ledger": (_truncated, "corrupt|integrity"),
    "damaged page": (_damaged_page, "corrupt|integrity"),
    "newer schema": (_newer, "newer xal"),
    "other SQLite file": (_foreign, "not an xal ledger"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_refused_with_the_path_and_a_recovery_and_left_untouched(tmp_path, kind):
    path = tmp_path / "ledger.sqlite"
    make, problem = BAD_FILES[kind]
    make(path)
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(LedgerError, match=problem) as caught:
            Ledger.open(path, run_config=None if readonly else CONFIG, readonly=readonly)
        message = str(caught.value)
        assert str(path) in message and "NOT modified" in message
        assert any(hint in message for hint in ("from a backup", "Upgrade xal", "Move it aside"))
        assert path.read_bytes() == before


def test_a_leftover_wal_without_its_database_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    (tmp_path / "ledger.sqlite-wal").write_bytes(b"frames of a deleted ledger")
    with pytest.raises(LedgerError, match="ledger.sqlite-wal does"):
        Ledger.open(path, run_config=CONFIG)
    assert not path.exists()


# ---------------------------------------------------------------------------------------- kill -9
DRIVER = textwrap.dedent('''
    from xal_core.loop.annotations import Annotation
    from xal_core.loop.ledger import AcquisitionRow, Arm

    ARMS = [Arm("random", 0), Arm("dual", 1)]

    def chosen(arm, round):
        return [(round * 7 + arm.seed * 3 + i * 11) % 1000 for i in range(4)]

    def drive(ledger, rounds, report=lambda line: None, asked=None):
        """The loop's resume protocol, reduced to the ledger calls."""
        for round in range(rounds):
            for arm in ARMS:
                if not ledger.acquisitions(arm, round):
                    ledger.record_acquisitions(arm, round, [
                        AcquisitionRow(item, f"case-{item}", rank, score=1.0 / (rank + 1), uncertainty=0.5)
                        for rank, item in enumerate(chosen(arm, round))], f"{arm.strategy}-m{round}")
                    report(f"acq {arm.strategy} {round}")
                pending = ledger.pending(arm)
                if asked is not None:
                    asked.extend(pending)
                ledger.record_annotations(arm, [Annotation(i, i % 3, f"c{i % 3}", None, "sim") for i in pending])
                if pending:
                    report(f"ann {arm.strategy} {round} {' '.join(map(str, pending))}")
                if round not in [r.round for r in ledger.rounds(arm)]:
                    ledger.record_round(arm, round, len(ledger.labeled(arm)), {"accuracy": round / 100},
                                        f"{arm.strategy}-m{round}")
                    report(f"rnd {arm.strategy} {round}")
''')
CHILD = DRIVER + textwrap.dedent('''
    import sys
    from xal_core.loop.ledger import Ledger
    ledger = Ledger.open(sys.argv[1], run_config={"k": 4})
    drive(ledger, 10**6, report=lambda line: print(line, flush=True))
''')


def test_a_run_killed_at_any_point_resumes_without_losing_or_repeating_labels(tmp_path):
    library: dict = {}
    exec(DRIVER, library)
    path = tmp_path / "ledger.sqlite"
    committed = []
    for lines in (12, 20, 30):  # three runs, each resuming the last one and SIGKILLed mid-way
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(lines):
                line = child.stdout.readline()
                assert line, "the child stopped before it was killed"
                committed.append(line.split())
        finally:
            os.kill(child.pid, signal.SIGKILL)  # usually inside a transaction: it commits without pause
            child.wait()
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
    asked_by_children = [int(i) for kind, _arm, _round, *items in committed if kind == "ann" for i in items]
    assert len(asked_by_children) == len(set(asked_by_children))  # no run asked for a label again
    raw = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    assert raw.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    counts = raw.execute("SELECT arm_id, round, count(*) FROM acquisitions GROUP BY arm_id, round").fetchall()
    raw.close()
    assert {count for _, _, count in counts} == {4}  # no round half written
    with Ledger.open(path, run_config={"k": 4}) as ledger:
        arms = {arm.strategy: arm for arm in ledger.arms()}
        annotated_before = {i for arm in arms.values() for i in ledger.labeled(arm)}
        for kind, strategy, round, *items in committed:  # every step a child saw committed is there
            arm = arms[strategy]
            if kind == "acq":
                assert [r.row.item_id for r in ledger.acquisitions(arm, int(round))] == \
                    library["chosen"](arm, int(round))
            elif kind == "ann":
                assert {int(i) for i in items} <= set(ledger.labeled(arm))
            else:
                assert int(round) in [r.round for r in ledger.rounds(arm)]
        last = max(int(c[2]) for c in committed)
        asked: list[int] = []
        library["drive"](ledger, last + 2, asked=asked)
        assert not set(asked) & annotated_before  # nothing labelled is asked for again
        assert len(asked) == len(set(asked))
        resumed = ledger.export()
        sessions = ledger._db.execute("SELECT count(*) FROM sessions").fetchone()[0]
    assert sessions == 4
    with Ledger.open(tmp_path / "straight.sqlite", run_config={"k": 4}) as straight:
        library["drive"](straight, last + 2)
        assert straight.export() == resumed  # as if it had never been killed
