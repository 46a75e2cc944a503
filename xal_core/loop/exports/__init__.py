"""``xal export-annotations``: a run's expert answers out of the ledger (docs/loop.md, "Export").

* ``dicom`` (``dicom.py``): per answered item a DICOM Segmentation of its ROI (in the source
  image's geometry) and a DICOM Structured Report of its label, both referencing the source
  image's UIDs, with UIDs derived from the run and the item, so exporting twice gives the same
  instances (and STOW-RS to a PACS stores them once);
* ``csv`` and ``coco`` (``tables.py``): the same answers for ML pipelines, in the pool frame.

``answers.py`` reads the ledger and finds each item's source image.
"""

from __future__ import annotations

from .answers import ExportedAnswer, SourceImage, read_answers
from .dicom import build_seg, build_sr, export_dicom, source_mask
from .tables import export_coco, export_csv

__all__ = ["ExportedAnswer", "SourceImage", "build_seg", "build_sr", "export_coco", "export_csv", "export_dicom",
           "read_answers", "source_mask"]
