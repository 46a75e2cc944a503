"""SEG and SR objects for file pools: a DICOM file's own UIDs, stand-ins for PNGs, masks resampled to
the source frame; every object passes dciodvfy and reads back to the answer (no server needed)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from xal_core.data.replicas.vindr import write_vindr
from xal_core.loop.annotations import Annotation, BoxRoi, MaskRoi
from xal_core.loop.exports import export_dicom
from xal_core.loop.exports.answers import ExportedAnswer, RunAnswers, SourceImage, SourceResolver

CLASSES = ("no_finding", "abnormal")


class _Files(SourceResolver):
    """Sources by id: a DICOM file's header, or (for ``png:…`` ids) the export's stand-in."""

    def __init__(self, run: RunAnswers, files: dict[str, Path]) -> None:
        self.run, self.files = run, files

    def resolve(self, answer: ExportedAnswer) -> SourceImage:
        path = self.files.get(answer.source_id)
        if path is None:
            return self._stand_in(answer, (50, 70), Path(answer.source_id + ".png"))
        return SourceImage(pydicom.dcmread(path, stop_before_pixels=True), "file")


def _run(tmp_path: Path, answers: list[ExportedAnswer]) -> RunAnswers:
    return RunAnswers(tmp_path, {"dataset": "generic", "data_dir": str(tmp_path)}, CLASSES, (32, 32), "run-key-1",
                      answers)


def test_masks_boxes_and_stand_ins_validate_and_read_back(tmp_path, dciodvfy):
    write_vindr(tmp_path / "vindr", 2, seed=1)  # 96 × 80 DICOMs
    files = {f"file{i}": path for i, path in enumerate(sorted((tmp_path / "vindr" / "train").glob("*.dicom")))}
    pool_mask = np.zeros((32, 32), dtype=bool)
    pool_mask[5:12, 7:20] = True
    pool_mask[20, 3] = True
    answers = [
        ExportedAnswer(Annotation(0, 1, "abnormal", MaskRoi.from_mask(pool_mask), "dr-file",
                                  "2026-01-02T03:04:05+00:00"), "file0"),
        ExportedAnswer(Annotation(1, 0, "no_finding", BoxRoi(()), "dr-file", "2026-01-02T03:04:06+00:00"), "file1"),
        ExportedAnswer(Annotation(2, 1, "abnormal", BoxRoi(((1.5, 2.0, 10.25, 30.0),)), "dr-file",
                                  "2026-01-02T03:04:07+00:00"), "png:case7"),
    ]
    run = _run(tmp_path, answers)
    items = export_dicom(run, tmp_path / "out", resolver=_Files(run, files))
    for path in sorted((tmp_path / "out").glob("*.dcm")):
        dciodvfy(path)
    first, second, third = items
    header = pydicom.dcmread(files["file0"], stop_before_pixels=True)
    assert (first.origin, first.sop_uid, first.study_uid) == ("file", header.SOPInstanceUID, header.StudyInstanceUID)
    seg = hd.seg.segread(first.seg)
    pixels = seg.get_pixels_by_source_instance([header.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0].astype(bool)
    y = ((np.arange(96) + 0.5) * 32 / 96).astype(int)  # nearest at pixel centres, 96 × 80 ← 32 × 32
    x = ((np.arange(80) + 0.5) * 32 / 80).astype(int)
    np.testing.assert_array_equal(pixels, pool_mask[y[:, None], x[None, :]])
    assert second.seg is None  # "no finding": the SR says it, no empty SEG
    sr = pydicom.dcmread(second.sr)
    assert sr.ContentSequence and "no_finding" in str(sr.ContentSequence)
    assert third.origin == "stand-in" and "no archive holds it" in third.note
    stand_in = hd.seg.segread(third.seg)
    assert (stand_in.Rows, stand_in.Columns) == (50, 70)
    again = export_dicom(run, tmp_path / "again", resolver=_Files(run, files))
    assert [(i.seg_uid, i.sr_uid, i.sop_uid) for i in again] == [(i.seg_uid, i.sr_uid, i.sop_uid) for i in items]
