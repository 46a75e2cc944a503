"""Answers as DICOM: a Segmentation (SEG) of each drawn ROI and a Structured Report (SR) of each label.

**SEG** (binary, highdicom): one per item whose ROI has at least one pixel, in the *source image's
geometry* (its Rows × Columns), referencing it. ROIs are stored in the pool frame (e.g. 224²), so
they are brought to the source frame first:

* boxes are scaled to source pixels (``x · Columns/W``, ``y · Rows/H``) and rasterised there by the
  contract's pixel rule: pixel ``(y, x)`` is inside when ``x_min ≤ x + 0.5 < x_max`` and
  ``y_min ≤ y + 0.5 < y_max``;
* masks are resampled to the source frame by nearest neighbour at pixel centres (source pixel
  ``(y, x)`` takes the pool pixel ``⌊(y + 0.5)·H/Rows⌋, ⌊(x + 0.5)·W/Columns⌋``): a mask cannot
  gain detail it never had, so its edges stay the pool frame's steps.

The segment is the answer's class: label = the class name, property category SCT 49755003
"Morphologically abnormal structure", property type the class's code (below), algorithm type
MANUAL. A "no finding" answer (known-empty ROI) and an undrawn ROI have no SEG: the SR says it.

**SR**: TID 1500 *Measurement Report* (Enhanced SR IOD) with one TID 1501 *Measurements and
Qualitative Evaluations* group per item: the source image as the group's image reference and its
*Finding* (DCM 121071) = the class's code (a "no finding" class is a class like any other: its
code is the finding). Why TID 1500: it is the template the
field's tools (dcmqi, OHIF, 3D Slicer, highdicom) read and write for image-level findings, and
highdicom builds it validated; a plain TID 2000 *Basic Diagnostic Imaging Report* carries findings
as narrative and has no per-image qualitative evaluation.

**Codes**: a class name becomes a code of the local coding scheme ``99XAL`` (a private scheme
designator as DICOM allows, described in each object's Coding Scheme Identification Sequence):
code value = the name (at most 16 characters, else ``C`` + its index), meaning = the name.

**UIDs** (series and instances) derive from the run (its ledger's creation) and the item
(``answers.uid_for``), and the content date and time are the answer's, so a second export writes
the same objects, and a PACS that receives them twice over STOW-RS keeps one.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from xal_core.loop.annotations import AnnotatedRoi, BoxRoi, MaskRoi

from .answers import ExportedAnswer, RunAnswers, SourceImage, SourceResolver, uid_for

__all__ = ["ExportedItem", "build_seg", "build_sr", "class_code", "export_dicom", "source_mask", "SCHEME"]

SCHEME = "99XAL"
MANUFACTURER = "xal"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9101, 9102
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
          "ReferringPhysicianName", "StudyID")


@dataclass(frozen=True)
class ExportedItem:
    item_id: int
    source_id: str
    label: int
    label_name: str
    origin: str  # of the source image: dicomweb, file, stand-in
    study_uid: str
    series_uid: str
    sop_uid: str
    seg: Path | None
    sr: Path
    seg_uid: str | None
    sr_uid: str
    note: str


def class_code(index: int, name: str) -> Any:
    import highdicom as hd

    value = name if 0 < len(name) <= 16 and all(c.isalnum() or c in "_-. " for c in name) else f"C{index}"
    return hd.sr.CodedConcept(value, SCHEME, name[:64])


def source_mask(roi: AnnotatedRoi, frame: tuple[int, int], shape: tuple[int, int]) -> np.ndarray | None:
    """The ROI (drawn in the pool ``frame``) as a bool mask in the source image's ``shape``
    (module doc: boxes scaled then rasterised by the pixel rule; masks nearest at pixel centres);
    ``None`` when nothing was drawn."""
    if roi is None:
        return None
    height, width = frame
    rows, columns = shape
    if isinstance(roi, BoxRoi):
        mask = np.zeros((rows, columns), dtype=bool)
        sx, sy = columns / width, rows / height
        xs, ys = np.arange(columns) + 0.5, np.arange(rows) + 0.5
        for x_min, y_min, x_max, y_max in roi.boxes:
            inside_x = (xs >= x_min * sx) & (xs < x_max * sx)
            inside_y = (ys >= y_min * sy) & (ys < y_max * sy)
            mask |= inside_y[:, None] & inside_x[None, :]
        return mask
    if isinstance(roi, MaskRoi):
        pool = roi.to_mask().numpy()
        if pool.shape != (height, width):
            height, width = pool.shape
        y = np.minimum(((np.arange(rows) + 0.5) * height / rows).astype(np.int64), height - 1)
        x = np.minimum(((np.arange(columns) + 0.5) * width / columns).astype(np.int64), width - 1)
        return pool[y[:, None], x[None, :]]
    raise TypeError(f"unexpected ROI type {type(roi).__name__}")


def _reference(source: SourceImage) -> Dataset:
    """The source header as highdicom reads it: type 2 patient/study attributes present (empty when
    the archive's copy lacks them, as de-identified images often do)."""
    header = copy.deepcopy(source.header)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _moment(answer: ExportedAnswer) -> tuple[str, str]:
    moment = datetime.fromisoformat(answer.annotation.time)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _coding_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "xal class names"
    item.CodingSchemeResponsibleOrganization = "the xal run that exported this object"
    return item


def _finish(dataset: Dataset, answer: ExportedAnswer) -> None:
    from pydicom.sequence import Sequence

    date, time = _moment(answer)
    dataset.ContentDate, dataset.ContentTime = date, time
    dataset.SeriesDate, dataset.SeriesTime = date, time
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    dataset.CodingSchemeIdentificationSequence = Sequence([_coding_scheme()])


def build_seg(source: SourceImage, mask: np.ndarray, answer: ExportedAnswer, class_names: tuple[str, ...], *,
              series_uid: str, sop_uid: str) -> Dataset:
    """A binary SEG of ``mask`` (bool, the source image's shape) with one segment: the answer's class."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label = answer.annotation.label
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=class_names[label][:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=class_code(label, class_names[label]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    reference = _reference(source)
    seg = hd.seg.Segmentation(
        source_images=[reference], pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=series_uid, series_number=SEG_SERIES_NUMBER, sop_instance_uid=sop_uid,
        instance_number=answer.annotation.item_id + 1, manufacturer=MANUFACTURER,
        manufacturer_model_name="xal export-annotations", software_versions=_version(), device_serial_number="0",
        content_label="XAL_ROI", content_description=f"xal item {answer.annotation.item_id} ROI"[:64],
        content_creator_name=_person(answer.annotation.annotator), omit_empty_frames=False)
    if "PatientOrientation" not in seg:  # type 2C without a patient frame of reference: the source's, or empty
        seg.PatientOrientation = reference.get("PatientOrientation", "")
    _finish(seg, answer)
    return seg


def build_sr(source: SourceImage, answer: ExportedAnswer, class_names: tuple[str, ...], *, run_key: str,
             series_uid: str, sop_uid: str) -> Dataset:
    """A TID 1500 Measurement Report (Enhanced SR) of the answer's label for the source image."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label = answer.annotation.label
    reference = _reference(source)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_for(run_key, "tracking", answer.annotation.item_id),
                                                     identifier=f"xal item {answer.annotation.item_id}"),
        finding_type=class_code(label, class_names[label]),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(reference)])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=_person(answer.annotation.annotator)))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=[group], title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.EnhancedSR(
        evidence=[reference], content=report[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=answer.annotation.item_id + 1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False)
    _finish(sr, answer)
    return sr


def _person(annotator: str) -> str:
    """The annotator as a DICOM person name (family name component only; ``^=\\`` removed)."""
    cleaned = "".join(c for c in annotator if c not in "^=\\\n\r")[:60].strip() or "unknown"
    return f"{cleaned}^"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("xal-ml")
    except Exception:
        return "unknown"


def export_dicom(run: RunAnswers, out: str | Path, *, stow: Callable[[list[Dataset]], Any] | None = None,
                 resolver: SourceResolver | None = None) -> list[ExportedItem]:
    """Write SEG and SR objects of every answer into ``out`` (``item-N-seg.dcm``, ``item-N-sr.dcm``);
    with ``stow``, send them (a list of datasets per call, e.g. ``DicomWebConnection.store``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolver = resolver or SourceResolver(run)
    exported: list[ExportedItem] = []
    for answer in run.answers:
        source = resolver.resolve(answer)
        study = str(source.header.StudyInstanceUID)
        item = answer.annotation.item_id
        mask = source_mask(answer.annotation.roi, run.frame, source.shape)
        seg_path = seg_uid = None
        objects: list[Dataset] = []
        if mask is not None and mask.any():
            seg_uid = uid_for(run.run_key, "seg", item, answer.source_id)
            seg = build_seg(source, mask, answer, run.class_names, sop_uid=seg_uid,
                            series_uid=uid_for(run.run_key, "seg series", study))
            seg_path = out / f"item-{item}-seg.dcm"
            _write(seg, seg_path)
            objects.append(seg)
        sr_uid = uid_for(run.run_key, "sr", item, answer.source_id)
        sr = build_sr(source, answer, run.class_names, run_key=run.run_key, sop_uid=sr_uid,
                      series_uid=uid_for(run.run_key, "sr series", study))
        sr_path = out / f"item-{item}-sr.dcm"
        _write(sr, sr_path)
        objects.append(sr)
        if stow is not None:
            stow(objects)
        exported.append(ExportedItem(item, answer.source_id, answer.annotation.label, answer.annotation.label_name,
                                     source.origin, study, str(source.header.SeriesInstanceUID),
                                     str(source.header.SOPInstanceUID), seg_path, sr_path, seg_uid, sr_uid, source.note))
    return exported


def _write(dataset: Dataset, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    dataset.save_as(temporary, enforce_file_format=True)
    temporary.replace(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
