"""What an export reads: the ledger's answers, and each answered item's source image.

The source image is the instance the item was made from, found from the item's source id:

* ``dicomweb``: a run on a generic folder with ``dicomweb.json`` (``xal ingest dicomweb+…
  --dataset-out``): the id is ``STUDY/SERIES/SOP``; the instance is retrieved over WADO-RS;
* ``file``: the adapter's record names a DICOM file (VinDr-CXR, SIIM-COVID, generic ``.dcm``):
  read from it, UIDs and all;
* ``stand-in``: no DICOM behind the item (PNG, NIfTI, generated data): a Secondary Capture header
  with UIDs derived from the run and the item (deterministic, so a second export matches the
  first), in the source image's size when the adapter can read it back, else the pool frame. The
  export notes this for every such item: those UIDs name no instance in any archive.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from xal_core.loop.annotations import Annotation

__all__ = ["ExportedAnswer", "SourceImage", "SourceResolver", "read_answers", "uid_for"]

_STAND_IN_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


@dataclass(frozen=True)
class ExportedAnswer:
    annotation: Annotation
    source_id: str


@dataclass(frozen=True)
class SourceImage:
    header: Dataset  # the source instance (pixel data may be left out), or a stand-in header
    origin: str  # "dicomweb", "file" or "stand-in"
    note: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.header.Rows), int(self.header.Columns)


@dataclass(frozen=True)
class RunAnswers:
    run_dir: Path
    record: dict[str, Any]  # RUN_DIR/data/data.json
    class_names: tuple[str, ...]
    frame: tuple[int, int]  # the pool frame the ROIs are drawn in (H, W)
    run_key: str  # identifies the run (its ledger's creation): the seed of every derived UID
    answers: list[ExportedAnswer]


def uid_for(run_key: str, *parts: object) -> str:
    """A UID derived from the run and ``parts`` (pydicom's ``generate_uid`` with entropy sources)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[run_key, *(str(part) for part in parts)]))


def read_answers(run_dir: str | Path) -> RunAnswers:
    """Every answered item of the run, by item id (an item answered once, whichever arm asked)."""
    from xal_core.loop.ledger import Ledger

    run_dir = Path(run_dir)
    ledger_path, data_json = run_dir / "ledger.sqlite", run_dir / "data" / "data.json"
    if not ledger_path.is_file() or not data_json.is_file():
        raise ValueError(f"{run_dir}: not a run folder (needs ledger.sqlite and data/data.json)")
    record = json.loads(data_json.read_text())
    ledger = Ledger.open(ledger_path, readonly=True)
    try:
        meta = ledger.meta
        run_key = hashlib.sha256(f"{meta.get('created_at')}\n{meta.get('run_config')}".encode()).hexdigest()
        sources: dict[int, str] = {}
        answers: dict[int, Annotation] = {}
        for arm in ledger.arms():
            for acquisition in ledger.acquisitions(arm):
                sources.setdefault(acquisition.row.item_id, acquisition.row.source_id)
            for annotation in ledger.annotations(arm):
                answers.setdefault(annotation.item_id, annotation)
    finally:
        ledger.close()
    exported = [ExportedAnswer(answers[item], sources.get(item) or f"item {item}") for item in sorted(answers)]
    return RunAnswers(run_dir, record, tuple(record["class_names"]), (int(record["size"][0]), int(record["size"][1])),
                      run_key, exported)


class SourceResolver:
    """Finds each item's source image (module doc), reopening the run's dataset once."""

    def __init__(self, run: RunAnswers) -> None:
        self.run = run
        self._adapter: Any = None
        self._adapter_failure: str | None = None
        self._records: dict[str, Any] | None = None
        self._dicomweb: Any = None
        data_dir = run.record.get("data_dir")
        if data_dir and (Path(data_dir) / "dicomweb.json").is_file():
            from xal_core.data.dicomweb import DicomWebImages

            self._dicomweb = DicomWebImages.of_folder(Path(data_dir))

    def resolve(self, answer: ExportedAnswer) -> SourceImage:
        from xal_core.data.dicom import parse_dicom
        from xal_core.data.dicomweb import InstanceRef

        if self._dicomweb is not None:
            try:
                ref = InstanceRef.from_id(answer.source_id)
            except ValueError:
                ref = None
            if ref is not None:
                data = self._dicomweb.connection.retrieve(ref)
                return SourceImage(parse_dicom(data, ref.id), "dicomweb")
        path, shape = self._file_of(answer.source_id)
        if path is not None:
            header = _read_dicom_header(path)
            if header is not None:
                return SourceImage(header, "file")
        return self._stand_in(answer, shape, path)

    def _file_of(self, source_id: str) -> tuple[Path | None, tuple[int, int] | None]:
        adapter = self._open_adapter()
        if adapter is None:
            return None, None
        if self._records is None:
            records = getattr(adapter, "records", [])
            self._records = {adapter.record_id(r): r for r in records} if hasattr(adapter, "record_id") else {}
        record = self._records.get(source_id)
        if record is None:
            return None, None
        for attribute in ("path", "image"):
            value = getattr(record, attribute, None)
            if isinstance(value, Path) and value.is_file():
                shape = None
                if not value.name.lower().endswith((".dcm", ".dicom")):
                    try:
                        pixels = adapter.source_image(source_id)
                        shape = None if pixels is None else (int(pixels.shape[-2]), int(pixels.shape[-1]))
                    except Exception:  # the stand-in falls back to the pool frame
                        shape = None
                return value, shape
        return None, None

    def _open_adapter(self) -> Any:
        if self._adapter is None and self._adapter_failure is None:
            from xal_core.loop.experiment import pool_source

            try:
                self._adapter = pool_source(self.run.record)
            except Exception as error:  # the folder moved, generated data: stand-ins then
                self._adapter_failure = str(error)
        return self._adapter

    def _stand_in(self, answer: ExportedAnswer, shape: tuple[int, int] | None, path: Path | None) -> SourceImage:
        rows, columns = shape or self.run.frame
        key, item = self.run.run_key, answer.annotation.item_id
        header = Dataset()
        header.SOPClassUID = _STAND_IN_CLASS
        header.SOPInstanceUID = uid_for(key, "stand-in", answer.source_id)
        header.StudyInstanceUID = uid_for(key, "stand-in study")
        header.SeriesInstanceUID = uid_for(key, "stand-in series")
        header.Modality = "OT"
        header.PatientID = f"xal-{key[:12]}"
        header.PatientName = ""
        header.Rows, header.Columns = int(rows), int(columns)
        header.SamplesPerPixel = 1
        header.PhotometricInterpretation = "MONOCHROME2"
        header.BitsAllocated, header.BitsStored, header.HighBit, header.PixelRepresentation = 8, 8, 7, 0
        header.InstanceNumber = item + 1
        where = f"its file {path.name}" if path is not None else "its source"
        frame = "the source image's size" if shape else "the pool frame"
        note = (f"no DICOM behind item {item} ({where} is not a DICOM): the SEG/SR reference a stand-in image "
                f"with UIDs derived from the run and item, in {frame} ({rows}x{columns}); no archive holds it")
        return SourceImage(header, "stand-in", note)


def _read_dicom_header(path: Path) -> Dataset | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError):
        return None
