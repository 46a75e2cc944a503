"""``xal ingest dicomweb+…`` against a real Orthanc: same pixels as the files, resumption, bad input."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from tests.pacs.replicas import CLASSES, dicom_files, item_id, uids, write_labels_csv, write_replicas
from xal_cli.main import main
from xal_core.data import PoolStore, open_dataset
from xal_core.data.dicomweb import DicomWebConnection, DicomWebError, read_credentials
from xal_core.data.dicomweb_ingest import ingest_dicomweb, partial_folder
from xal_core.data.ingest import ingest


def _connection(orthanc, **kwargs) -> DicomWebConnection:
    return DicomWebConnection(orthanc.source, headers=read_credentials(orthanc.credentials), **kwargs)


def _pool_rows(path) -> dict[str, np.ndarray]:
    pool = PoolStore.open(path)
    ids = pool.source_ids(range(len(pool)))
    images = pool.images(range(len(pool))).numpy()
    return dict(zip(ids, images, strict=True))


def test_the_same_images_give_the_same_pool(orthanc, tmp_path):
    folders = write_replicas(tmp_path / "replicas")
    orthanc.upload(dicom_files(folders))
    labels = tmp_path / "labels.csv"
    write_labels_csv(labels, folders)
    code = main(["ingest", orthanc.source, "--query", "Modality=DX", "--labels", str(labels), "--classes",
                 ",".join(CLASSES), "--credentials-file", str(orthanc.credentials), "--size", "48", "40",
                 "--out", str(tmp_path / "web"), "--quiet"])
    assert code == 0
    web = _pool_rows(tmp_path / "web")
    compared = 0
    for kind, folder in folders.items():
        dataset = open_dataset(kind, folder, size=(48, 40))
        ingest(dataset, tmp_path / f"files-{kind}", workers=1)
        files = _pool_rows(tmp_path / f"files-{kind}")
        by_id = {dataset.record_id(r): r.path for r in dataset.records}
        for identifier, image in files.items():
            np.testing.assert_array_equal(web[item_id(by_id[identifier])], image)
            compared += 1
    assert compared == len(web) == 10  # every instance, item for item
    manifest = json.loads((tmp_path / "web" / "manifest.json").read_text())
    assert manifest["sources"][0]["kind"] == "dicomweb" and manifest["classes"] == list(CLASSES)
    assert not partial_folder(tmp_path / "web").exists()


def test_an_outage_mid_ingest_resumes_with_nothing_lost_or_doubled(orthanc, tmp_path):
    folders = write_replicas(tmp_path / "replicas", vindr=5, siim=3)
    files = dicom_files(folders)
    orthanc.upload(files)
    out = tmp_path / "pool"
    stopped = []

    def stop_after_three(phase: str, done: int, total: int) -> None:
        if phase == "retrieve" and done == 3 and not stopped:
            orthanc.stop()  # the PACS goes away mid-ingest
            stopped.append(done)

    with pytest.raises(DicomWebError, match=r"cannot be reached after 3 attempts.*3 of 8 instances are retrieved"):
        ingest_dicomweb(_connection(orthanc, retries=2, backoff=0.05), out, size=(32, 32), query="Modality=DX",
                        classes=CLASSES, workers=1, on_phase=stop_after_three)
    assert not out.exists()  # no pool at all, nothing half-written
    assert len(list((partial_folder(out) / "instances").glob("*.dcm"))) == 3

    orthanc.start()
    crash = RuntimeError("killed while writing the pool")

    def die_while_writing(phase: str, done: int, total: int) -> None:
        if phase == "write" and done == 4:
            raise crash

    with pytest.raises(RuntimeError, match="killed while writing"):
        ingest_dicomweb(_connection(orthanc), out, size=(32, 32), query="Modality=DX", classes=CLASSES, workers=1,
                        on_phase=die_while_writing)
    assert not out.exists()

    result = ingest_dicomweb(_connection(orthanc), out, size=(32, 32), query="Modality=DX", classes=CLASSES)
    assert result.resumed and result.retrieved == 0 and result.listed == 8
    ids = PoolStore.open(out).source_ids(range(8))
    assert sorted(ids) == sorted(item_id(path) for path in files)  # every instance, once
    assert not partial_folder(out).exists()


def test_transient_outage_is_retried_with_backoff(orthanc, tmp_path):
    folders = write_replicas(tmp_path / "replicas", vindr=2, siim=1)
    orthanc.upload(dicom_files(folders))
    orthanc.stop()
    restart = threading.Timer(1.0, orthanc.start)
    restart.start()
    try:
        result = ingest_dicomweb(_connection(orthanc, retries=8, backoff=0.1), tmp_path / "pool", size=(32, 32),
                                 query="Modality=DX", classes=CLASSES)
    finally:
        restart.join()
    assert result.summary.written == 3


def _corrupt_and_unsupported(folders, tmp_path):
    """A copy of one instance with truncated pixel data, and one in a transfer syntax nothing here decodes."""
    source = pydicom.dcmread(dicom_files(folders)[0])
    corrupt = copy.deepcopy(source)
    corrupt.SOPInstanceUID = corrupt.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    corrupt.PixelData = source.PixelData[: len(source.PixelData) // 3]
    corrupt_path = tmp_path / "corrupt.dcm"
    corrupt.save_as(corrupt_path, enforce_file_format=True)
    odd = copy.deepcopy(source)
    odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    odd.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264: no decoder for an X-ray here
    odd.PixelData = encapsulate([b"\x00\x00\x00\x01" + bytes(200)])
    odd["PixelData"].VR = "OB"
    odd_path = tmp_path / "mpeg4.dcm"
    odd.save_as(odd_path, enforce_file_format=True)
    return corrupt, odd, [corrupt_path, odd_path]


def test_a_corrupt_instance_and_an_unsupported_syntax_are_report_lines(orthanc, tmp_path, capsys):
    folders = write_replicas(tmp_path / "replicas", vindr=3, siim=2)
    orthanc.upload(dicom_files(folders))
    corrupt, odd, paths = _corrupt_and_unsupported(folders, tmp_path)
    orthanc.upload(paths)
    out = tmp_path / "pool"
    code = main(["ingest", orthanc.source, "--query", "Modality=DX", "--classes", "normal,abnormal",
                 "--credentials-file", str(orthanc.credentials), "--size", "32", "--out", str(out), "--quiet"])
    assert code == 0
    assert "5 items written, 2 skipped, 5 in the pool" in capsys.readouterr().out
    report = dict(line.split("\t", 1) for line in (out / "ingest_report.tsv").read_text().splitlines())
    by_sop = {key.split("/")[2]: reason for key, reason in report.items()}
    assert "corrupt or truncated pixel data" in by_sop[corrupt.SOPInstanceUID]
    assert "cannot decode transfer syntax" in by_sop[odd.SOPInstanceUID]


def test_bad_credentials_and_unknown_studies_say_so_and_write_nothing(orthanc, tmp_path, capsys, monkeypatch):
    folders = write_replicas(tmp_path / "replicas", vindr=2, siim=1)
    orthanc.upload(dicom_files(folders))
    monkeypatch.delenv("XAL_DICOMWEB_CREDENTIALS", raising=False)
    out = tmp_path / "pool"
    assert main(["ingest", orthanc.source, "--query", "Modality=DX", "--classes", "a,b", "--out", str(out),
                 "--quiet"]) == 2
    assert "refused the credentials (HTTP 401)" in capsys.readouterr().err
    wrong = tmp_path / "wrong"
    wrong.write_text("xal:not-the-password\n")
    assert main(["ingest", orthanc.source, "--study", uids(dicom_files(folders)[0])[0], "--classes", "a,b",
                 "--credentials-file", str(wrong), "--out", str(out), "--quiet"]) == 2
    assert "HTTP 401" in capsys.readouterr().err
    monkeypatch.setenv("XAL_DICOMWEB_CREDENTIALS", orthanc.credentials.read_text())  # from the environment
    assert main(["ingest", orthanc.source, "--study", "1.2.3.999999", "--classes", "a,b", "--out", str(out),
                 "--quiet"]) == 2
    assert "study 1.2.3.999999 does not exist on this server" in capsys.readouterr().err
    assert not out.exists() and not partial_folder(out).exists()
    assert main(["ingest", f"dicomweb+http://{'xal:secret@'}127.0.0.1:{orthanc.port}/dicom-web", "--study", "1.2",
                 "--classes", "a", "--out", str(out)]) == 2
    assert "put no credentials in the address" in capsys.readouterr().err
