"""``xal export-annotations RUN_DIR --format dicom|csv|coco --out DIR [--stow URL]``.

The run's expert answers out of its ledger: DICOM SEG + SR objects referencing the source images
(sent back to a PACS with ``--stow dicomweb+http://…``), or CSV / COCO tables for ML pipelines
(docs/loop.md, "Export"). Exporting twice writes the same objects (UIDs derived from the run and
the item), so a second ``--stow`` adds nothing to the archive.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export-annotations", help="a run's answers as DICOM SEG/SR (optionally STOW-RS), "
                                 "CSV or COCO")
    parser.add_argument("run_dir", type=Path, help="the run folder (ledger.sqlite, data/)")
    parser.add_argument("--format", choices=("dicom", "csv", "coco"), default="dicom")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--stow", default=None, metavar="URL",
                        help="dicom: also store the objects over STOW-RS, e.g. dicomweb+http://HOST:PORT/dicom-web")
    parser.add_argument("--credentials-file", default=None, metavar="FILE",
                        help="--stow: user:password or a bearer token (else $XAL_DICOMWEB_CREDENTIALS)")
    parser.add_argument("--ca-bundle", default=None, metavar="PEM", help="--stow: CA certificates for TLS")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xal_core.loop.exports import export_coco, export_csv, export_dicom, read_answers

    if args.stow and args.format != "dicom":
        raise ValueError("--stow sends DICOM objects: use it with --format dicom")
    answers = read_answers(args.run_dir)
    if args.format == "csv":
        print(f"{len(answers.answers)} answers: {export_csv(answers, args.out)}")
        return 0
    if args.format == "coco":
        print(f"{len(answers.answers)} answers: {export_coco(answers, args.out)}")
        return 0
    stow = None
    if args.stow:
        from xal_core.data.dicomweb import DicomWebConnection, read_credentials

        connection = DicomWebConnection(args.stow, headers=read_credentials(args.credentials_file),
                                        ca_bundle=args.ca_bundle)
        stow = connection.store
    items = export_dicom(answers, args.out, stow=stow)
    index = args.out / "export.csv"
    with index.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "source_id", "label_name", "source", "study_uid", "series_uid", "sop_uid",
                         "seg_file", "seg_uid", "sr_file", "sr_uid", "note"])
        for item in items:
            writer.writerow([item.item_id, item.source_id, item.label_name, item.origin, item.study_uid,
                             item.series_uid, item.sop_uid, "" if item.seg is None else item.seg.name,
                             item.seg_uid or "", item.sr.name, item.sr_uid, item.note])
    segs = sum(item.seg is not None for item in items)
    stand_ins = [item for item in items if item.origin == "stand-in"]
    print(f"{len(items)} answers: {segs} SEG and {len(items)} SR objects in {args.out} (index: {index})"
          + (f"; stored over STOW-RS at {args.stow}" if args.stow else ""))
    if stand_ins:
        print(f"note: {len(stand_ins)} item(s) have no DICOM source; their objects reference stand-in images "
              f"(see the note column of {index.name}), e.g. {stand_ins[0].note}")
    return 0
