"""From the PACS and back: replicas in Orthanc → ``xal ingest dicomweb+…`` → a short ``xal run``
with the file oracle → ``xal export-annotations --stow`` → the SEG and SR objects in Orthanc hold
exactly the ledger's answers; a second export adds nothing."""

from __future__ import annotations

import csv
import json

import highdicom as hd
import numpy as np
import pydicom

from tests.pacs.replicas import CLASSES, dicom_files, write_labels_csv, write_replicas
from xal_cli.main import main
from xal_core.data.dicom import decode_dicom
from xal_core.data.dicomweb import DicomWebConnection, InstanceRef, read_credentials
from xal_core.loop.annotations import BoxRoi
from xal_core.loop.ledger import Ledger

RUN = ["--size", "32", "--strategies", "random", "--seeds", "1", "--initial", "3", "--rounds", "1", "--per-round",
       "2", "--epochs", "1", "--architecture", "resnet10", "--batch-size", "4", "--scorer", "inprocess", "--oracle",
       "file", "--overlay-images", "0", "--no-progress"]


def _answer_sheet(run_dir, truth: dict[str, str]) -> int:
    """Fill the labelling sheet like a radiologist: the true class; a box on abnormal images, a
    known-empty ROI ("no finding") on normal ones. Returns how many rows were answered."""
    sheet = run_dir / "to_label.csv"
    lines = sheet.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("item_id"))
    rows = list(csv.DictReader(lines[header:]))
    answered = 0
    for row in rows:
        if row["label"]:
            continue
        label = truth[row["source_id"].split("/")[2]]
        item = int(row["item_id"])
        row["label"], row["annotator"] = label, "dr-pacs"
        row["roi"] = "[]" if label == CLASSES[0] else json.dumps([[2.5 + item % 5, 3.25, 17.75 + item % 7, 21.5]])
        answered += 1
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return answered


def _expected_mask(boxes, frame, shape) -> np.ndarray:
    """The contract's pixel rule on boxes scaled from the pool frame to the source image."""
    rows, columns = shape
    sy, sx = rows / frame[0], columns / frame[1]
    y, x = np.indices(shape) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (x0 * sx <= x) & (x < x1 * sx) & (y0 * sy <= y) & (y < y1 * sy)
    return mask


def _findings(dataset) -> list[str]:
    """Code meanings of every 'Finding' content item of an SR, depth first."""
    found = []
    for item in dataset.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0]
        if name.CodeMeaning == "Finding" and "ConceptCodeSequence" in item:
            found.append(item.ConceptCodeSequence[0].CodeMeaning)
        found.extend(_findings(item))
    return found


def test_pacs_to_run_to_pacs(orthanc, tmp_path, dciodvfy, capsys):
    folders = write_replicas(tmp_path / "replicas", vindr=6, siim=4)
    orthanc.upload(dicom_files(folders))
    labels = tmp_path / "labels.csv"
    truth = write_labels_csv(labels, folders)
    credentials = ["--credentials-file", str(orthanc.credentials)]
    pool, dataset, run = tmp_path / "pool", tmp_path / "dataset", tmp_path / "run"
    assert main(["ingest", orthanc.source, "--query", "Modality=DX", "--labels", str(labels), "--classes",
                 ",".join(CLASSES), *credentials, "--size", "32", "--out", str(pool), "--dataset-out", str(dataset),
                 "--quiet"]) == 0
    assert (dataset / "dicomweb.json").is_file()

    # the run: the expert answers through the file oracle, twice (initial labels, then round 1)
    command = ["run", "--dataset", "generic", "--data-dir", str(dataset), "--out", str(run), *RUN]
    assert main(command) == 3
    assert _answer_sheet(run, truth) == 3
    assert main(command) == 3
    assert _answer_sheet(run, truth) == 2
    assert main(command) == 0

    with Ledger.open(run / "ledger.sqlite", readonly=True) as ledger:
        answers = {}
        for arm in ledger.arms():
            sources = {r.row.item_id: r.row.source_id for r in ledger.acquisitions(arm)}
            for annotation in ledger.annotations(arm):
                answers[sources[annotation.item_id]] = annotation
    assert len(answers) == 5

    # the annotator's "source image": the PACS original at native resolution, through WADO-RS, cached
    from xal_web.views import SourceImages

    connection = DicomWebConnection(orthanc.source, headers=read_credentials(orthanc.credentials))
    images = SourceImages(run)
    source_id = next(iter(answers))
    original = decode_dicom(pydicom.dcmread(_bytes_file(connection, source_id, tmp_path)), source_id).pixels
    shown = images.pixels(source_id)
    assert not isinstance(shown, str), shown
    values = shown[0] if isinstance(shown, tuple) else shown  # (values, info) or values alone
    assert values.shape == original.shape  # native resolution, not the pool's 32×32
    np.testing.assert_allclose(values, original, rtol=0, atol=1e-6)
    assert list((run / "source-cache").glob("*.dcm"))

    # export to the PACS
    exported = tmp_path / "export"
    assert main(["export-annotations", str(run), "--format", "dicom", "--out", str(exported), "--stow",
                 orthanc.source, *credentials]) == 0
    files = sorted(exported.glob("*.dcm"))
    abnormal = [s for s, a in answers.items() if a.label_name == "abnormal"]
    assert len(files) == len(answers) + len(abnormal)
    for path in files:
        dciodvfy(path)
    before = sorted(orthanc.instances())

    segs = connection.search(query="Modality=SEG")
    reports = connection.search(query="Modality=SR")
    assert len(segs) == len(abnormal) and len(reports) == len(answers)
    frame = (32, 32)
    for ref in segs:
        seg = hd.seg.segread(_bytes_file(connection, ref.id, tmp_path))
        source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        source_id = next(s for s in answers if s.endswith(source_uid))
        assert ref.study == source_id.split("/")[0]  # in the source's study
        answer = answers[source_id]
        pixels = seg.get_pixels_by_source_instance([source_uid], segment_numbers=[1])[0, :, :, 0]
        header = pydicom.dcmread(_bytes_file(connection, source_id, tmp_path), stop_before_pixels=True)
        assert pixels.shape == (header.Rows, header.Columns)  # the source's geometry, not the pool frame
        assert isinstance(answer.roi, BoxRoi)
        np.testing.assert_array_equal(pixels.astype(bool), _expected_mask(answer.roi.boxes, frame, pixels.shape))
        description = seg.SegmentSequence[0]
        assert description.SegmentLabel == answer.label_name
        assert description.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == answer.label_name
    for ref in reports:
        sr = pydicom.dcmread(_bytes_file(connection, ref.id, tmp_path))
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        source_uid = evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        source_id = next(s for s in answers if s.endswith(source_uid))
        assert _findings(sr) == [answers[source_id].label_name]
        assert sr.StudyInstanceUID == source_id.split("/")[0]

    # export again: the same objects, nothing new in the archive
    again = tmp_path / "export-again"
    assert main(["export-annotations", str(run), "--format", "dicom", "--out", str(again), "--stow",
                 orthanc.source, *credentials]) == 0
    assert [p.name for p in sorted(again.glob("*.dcm"))] == [p.name for p in files]
    for first, second in zip(files, sorted(again.glob("*.dcm")), strict=True):
        assert pydicom.dcmread(first).SOPInstanceUID == pydicom.dcmread(second).SOPInstanceUID
    assert sorted(orthanc.instances()) == before

    # the tables
    assert main(["export-annotations", str(run), "--format", "csv", "--out", str(tmp_path / "tables")]) == 0
    assert main(["export-annotations", str(run), "--format", "coco", "--out", str(tmp_path / "tables")]) == 0
    rows = list(csv.DictReader((tmp_path / "tables" / "annotations.csv").open()))
    assert {row["source_id"]: row["label_name"] for row in rows} == {s: a.label_name for s, a in answers.items()}
    coco = json.loads((tmp_path / "tables" / "annotations.coco.json").read_text())
    assert len(coco["annotations"]) == sum(len(a.roi.boxes) for a in answers.values())


def _bytes_file(connection: DicomWebConnection, source_id: str, tmp_path):
    path = tmp_path / "retrieved" / f"{source_id.split('/')[2]}.dcm"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(connection.retrieve(InstanceRef.from_id(source_id)))
    return path
