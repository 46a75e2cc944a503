"""Oracles: the simulated oracle over real pool stores, the file oracle over CSVs a person filled in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xal_core.data import Item, PoolStore
from xal_core.data.pool_store import PoolWriter
from xal_core.loop.annotations import Annotation, BoxRoi, MaskRoi, roi_batch
from xal_core.loop.ledger import AcquisitionRow, Arm, Ledger
from xal_core.loop.oracle import FileOracle, OracleAnswer, SimulatedOracle, write_labelling_sheet

CLASSES = ("healthy", "lesion")


def box_pool(path):
    """Three 12×10 items: two boxes, known empty, unknown; chunk 2 so ids span chunks."""
    items = [
        Item("case-a", torch.rand(1, 12, 10), torch.tensor([[1.0, 2.0, 5.0, 6.0], [6.0, 0.0, 10.0, 3.0]]), 1),
        Item("case-b", torch.rand(1, 12, 10), torch.zeros(0, 4), 0),
        Item("case-c", torch.rand(1, 12, 10), None, 1),
    ]
    with PoolWriter(path, size=(12, 10), channels=1, classes=CLASSES, roi_format="boxes", source={"kind": "test"},
                    chunk=2, max_boxes=4) as writer:
        for item in items:
            writer.add(item)
    return PoolStore.open(path), items


def mask_pool(path):
    masks = torch.zeros(4, 9, 13, dtype=torch.bool)
    masks[0, 2:5, 3:12] = True
    masks[2, 8, 12] = True
    rois = [masks[0], masks[1], masks[2], None]
    items = [Item(f"slice-{i}", torch.rand(1, 9, 13), roi, i % 2) for i, roi in enumerate(rois)]
    with PoolWriter(path, size=(9, 13), channels=1, classes=CLASSES, roi_format="mask", source={"kind": "test"},
                    chunk=3) as writer:
        for item in items:
            writer.add(item)
    return PoolStore.open(path), items


# ---------------------------------------------------------------------------------------- simulated
def test_simulated_oracle_reveals_labels_and_box_rois_from_a_pool(tmp_path):
    pool, items = box_pool(tmp_path / "pool")
    oracle = SimulatedOracle.from_pool(pool)
    answer = oracle.annotate([2, 0, 1])
    assert answer.missing == [] and [a.item_id for a in answer.annotations] == [2, 0, 1]
    by_id = {a.item_id: a for a in answer.annotations}
    assert [by_id[i].label for i in range(3)] == [1, 0, 1]
    assert [by_id[i].label_name for i in range(3)] == ["lesion", "healthy", "lesion"]
    assert by_id[0].roi == BoxRoi(((1, 2, 5, 6), (6, 0, 10, 3)))
    assert by_id[1].roi == BoxRoi(()) and by_id[2].roi is None  # known empty vs unknown
    assert {a.annotator for a in answer.annotations} == {"simulated"}
    assert oracle.annotate([]) == OracleAnswer([], [])
    with pytest.raises(ValueError, match="out of range 0..2"):
        oracle.annotate([3])
    with pytest.raises(ValueError, match=r"more than once: \[1\]"):
        oracle.annotate([1, 1])
    labels_only = SimulatedOracle.from_pool(tmp_path / "pool", reveal_roi=False, annotator="no-roi")
    assert [a.roi for a in labels_only.annotate([0]).annotations] == [None]


def test_simulated_oracle_reveals_mask_rois_that_match_the_pool(tmp_path):
    pool, items = mask_pool(tmp_path / "pool")
    answer = SimulatedOracle.from_pool(pool).annotate([3, 2, 0, 1])
    by_id = {a.item_id: a for a in answer.annotations}
    assert by_id[3].roi is None
    for item in range(3):
        assert isinstance(by_id[item].roi, MaskRoi)
        assert torch.equal(by_id[item].roi.to_mask(), items[item].roi)
        assert by_id[item].label == items[item].label
    stored = next(pool.chunks(prefetch=0)).roi
    rebuilt = roi_batch([by_id[i].roi for i in range(3)], pool.size)
    assert torch.equal(rebuilt.to_masks(), stored.masks) and rebuilt.known.tolist() == [True, True, True]


def test_simulated_answers_go_into_the_ledger_and_back(tmp_path):
    pool, _ = mask_pool(tmp_path / "pool")
    oracle = SimulatedOracle.from_pool(pool)
    arm = Arm("dual", 0)
    with Ledger.open(tmp_path / "ledger.sqlite", run_config={}) as ledger:
        ledger.record_acquisitions(arm, 0, [AcquisitionRow(i, f"slice-{i}", r) for r, i in enumerate([0, 3, 2])], "m")
        answer = oracle.annotate(ledger.pending(arm))
        ledger.record_annotations(arm, answer.annotations)
        assert ledger.pending(arm) == [] and ledger.labeled(arm) == {0: 0, 3: 1, 2: 0}
        stored = {a.item_id: a for a in ledger.annotations(arm)}
        assert all(stored[a.item_id].same_answer(a) for a in answer.annotations)
        ledger.record_annotations(arm, oracle.annotate([0, 3, 2]).annotations)  # asked again after a crash: quiet


def test_simulated_oracle_from_a_mapping():
    oracle = SimulatedOracle({4: 1, 9: 0}, CLASSES, rois_by_id={4: BoxRoi(())}, annotator="sim")
    answer = oracle.annotate([9, 4])
    assert [(a.item_id, a.label, a.label_name, a.roi) for a in answer.annotations] == \
        [(9, 0, "healthy", None), (4, 1, "lesion", BoxRoi(()))]
    with pytest.raises(ValueError, match=r"no label for item\(s\) \[5\]"):
        oracle.annotate([5])
    with pytest.raises(ValueError, match="outside 0..1"):
        SimulatedOracle({1: 7}, CLASSES).annotate([1])


# ---------------------------------------------------------------------------------------- file
SHEET = """\
# filled in by dr-b
item_id,source_id,label,annotator,roi
0,case-a,lesion,dr-b,"[[1, 2, 5, 6]]"
1,case-b,0,,[]
2,case-c,,,
5,case-x,lesion,,
1,case-b,nonsense,,
2,case-c,Lesion,,[[0,0,4,4]]
7,ghost,lesion,,
0,case-a,lesion,dr-c,"[[1, 2, 5, 6]]"
3,case-d,healthy,,"[[1, 2,]]"
4,case-e,healthy,,"[[50, 50, 60, 60]]"
6,case-g,healthy,,
6,case-g,lesion,,
8,wrong-name,healthy,,
x9,case-z,healthy,,
"""


def test_file_oracle_keeps_valid_lines_and_reports_the_rest_line_by_line(tmp_path):
    sheet = tmp_path / "labels.csv"
    sheet.write_text(SHEET)
    sources = {0: "case-a", 1: "case-b", 2: "case-c", 3: "case-d", 4: "case-e", 6: "case-g", 8: "case-h"}
    oracle = FileOracle(sheet, CLASSES, pool_size=7 + 2, source_ids=sources, roi_size=(12, 10))
    answer = oracle.annotate([0, 1, 2, 3, 4, 6, 8])
    got = {a.item_id: a for a in answer.annotations}
    assert list(got) == [0, 1, 2]  # in the order asked
    assert got[0] == Annotation(0, 1, "lesion", BoxRoi(((1, 2, 5, 6),)), "dr-b", got[0].time)  # its duplicate agrees
    assert (got[1].label, got[1].roi, got[1].annotator) == (0, BoxRoi(()), "file:labels.csv")
    assert (got[2].label_name, got[2].roi) == ("lesion", BoxRoi(((0, 0, 4, 4),)))  # unquoted JSON, last column
    assert answer.missing == [3, 4, 6, 8]  # bad ROI, ROI outside, conflicting duplicates, wrong source id
    reasons = {r.line: r.reason for r in oracle.rejections}
    assert sorted(reasons) == [6, 7, 9, 11, 12, 13, 14, 15, 16]  # line 5 (blank label) is not an error
    assert "not among the 7 items asked for" in reasons[6]
    assert "unknown label 'nonsense': expected one of healthy, lesion (or 0..1)" in reasons[7]
    assert "not among" in reasons[9]  # line 8: unquoted ROI JSON, line 10: a duplicate that agrees
    assert "bad roi" in reasons[11] and "not JSON" in reasons[11]
    assert "lies entirely outside" in reasons[12]
    assert "answered differently on lines 13, 14" in reasons[13] == reasons[14]
    assert "does not match item 8 ('case-h')" in reasons[15]
    assert "'x9' is not a non-negative integer" in reasons[16]
    assert [r.text for r in oracle.rejections][0] == "5,case-x,lesion,,"
    report = oracle.report_path.read_text().splitlines()
    assert oracle.report_path == tmp_path / "labels.csv.rejected.tsv"
    assert report[0].startswith(f"# 9 line(s) of {sheet} rejected") and report[1] == "line\treason\ttext"
    assert report[2].split("\t")[0] == "6" and report[2].split("\t")[2] == "5,case-x,lesion,,"
    assert len(report) == 2 + 9
    assert sheet.read_text() == SHEET  # the person's file is never touched

    sheet.write_text("item_id,label\n0,lesion\n1,healthy\n")  # fixed: the stale report goes away
    answer = oracle.annotate([0, 1])
    assert oracle.rejections == [] and not oracle.report_path.exists() and answer.missing == []


def test_file_oracle_rejects_ids_outside_the_pool_and_malformed_rows(tmp_path):
    sheet = tmp_path / "answers.csv"
    sheet.write_text("label,item_id,notes\nlesion,12,\nlesion,1,fine,extra\n0,2,ok\n\n1,3\n")
    oracle = FileOracle(sheet, CLASSES, pool_size=10)
    answer = oracle.annotate([1, 2, 3])
    assert [(a.item_id, a.label) for a in answer.annotations] == [(2, 0), (3, 1)]
    assert answer.missing == [1]
    assert [(r.line, r.reason) for r in oracle.rejections] == [
        (2, "unknown item id 12: not in the pool (ids 0..9)"), (3, "4 fields, the header has 3")]


def test_file_oracle_reads_a_spreadsheet_export_with_bom_and_crlf(tmp_path):
    sheet = tmp_path / "export.csv"
    sheet.write_bytes("\ufeffitem_id,label\r\n1,Lesion\r\n2,bogus\r\n".encode())
    oracle = FileOracle(sheet, CLASSES)
    answer = oracle.annotate([1, 2])
    assert [(a.item_id, a.label) for a in answer.annotations] == [(1, 1)] and answer.missing == [2]
    assert [(r.line, r.text) for r in oracle.rejections] == [(3, "2,bogus")]


def test_file_oracle_header_and_file_problems_are_errors(tmp_path):
    sheet = tmp_path / "labels.csv"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileOracle(sheet, CLASSES).annotate([1])
    sheet.write_text("# only a comment\nitem,label\n1,lesion\n")
    with pytest.raises(ValueError, match="lacks column"):
        FileOracle(sheet, CLASSES).annotate([1])


def test_sheet_round_trip_through_a_person_and_the_file_oracle(tmp_path):
    pool, items = box_pool(tmp_path / "pool")
    sheet = tmp_path / "round-1.csv"
    assert write_labelling_sheet(sheet, [2, 0], ["case-c", "case-a"], pool.classes) == [2, 0]
    text = sheet.read_text()
    assert "healthy, lesion" in text and text.splitlines()[3] == "item_id,source_id,label,annotator,roi"
    assert text.splitlines()[4:] == ["2,case-c,,,", "0,case-a,,,"]
    oracle = FileOracle.for_pool(sheet, pool)
    assert oracle.annotate([2, 0]).missing == [2, 0]  # nothing filled in yet
    sheet.write_text(text.replace("2,case-c,,,", '2,case-c,lesion,dr-d,"[[0, 0, 3, 3]]"'))  # the person's edit
    assert write_labelling_sheet(sheet, [2, 0, 1], {0: "case-a", 1: "case-b", 2: "case-c"}, pool.classes) == [1]
    lines = sheet.read_text().splitlines()
    assert lines[4] == '2,case-c,lesion,dr-d,"[[0, 0, 3, 3]]"' and lines[-1] == "1,case-b,,,"  # edit kept
    answer = oracle.annotate([2, 0, 1])
    assert [(a.item_id, a.label, a.annotator) for a in answer.annotations] == [(2, 1, "dr-d")]
    assert answer.missing == [0, 1] and oracle.rejections == []
    sheet.write_text(sheet.read_text().replace("1,case-b,,,", "1,case-a,healthy,,"))  # shifted row
    oracle.annotate([2, 0, 1])
    assert [r.line for r in oracle.rejections] == [len(lines)]
    assert "does not match item 1" in oracle.rejections[0].reason
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a labelling sheet"):
        write_labelling_sheet(tmp_path / "other.csv", [1], ["x"], CLASSES)


def test_annotation_values_are_checked():
    with pytest.raises(ValueError, match="must be UTC"):
        Annotation(1, 0, "healthy", None, "a", "2025-01-01T10:00:00+02:00")
    with pytest.raises(ValueError, match="not ISO 8601"):
        Annotation(1, 0, "healthy", None, "a", "yesterday")
    with pytest.raises(ValueError, match="label must be a non-negative integer"):
        Annotation(1, -1, "healthy", None, "a")
    assert Annotation(np.int64(3), np.int32(1), "lesion", None, "a").item_id == 3
    with pytest.raises(ValueError, match="x_min <= x_max"):
        BoxRoi(((5, 0, 1, 1),))
    with pytest.raises(ValueError, match="do not hold a 3×9 mask"):
        MaskRoi(b"\0" * 3, 3, 9)
    mask = np.zeros((3, 9), dtype=bool)
    mask[1, 8] = True
    assert MaskRoi.from_mask(mask).packed == bytes([0, 0, 0, 0x80, 0, 0])
    assert torch.equal(BoxRoi(((0.4, 0, 1.6, 1),)).to_mask((2, 3)), torch.tensor([[True, True, False], [False] * 3]))
