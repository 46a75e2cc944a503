"""Replicas of VinDr-CXR and SIIM-COVID (``xal fixtures``), and their labels keyed by DICOM UIDs."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom

from xal_core.data import open_dataset
from xal_core.data.replicas.siim import write_siim
from xal_core.data.replicas.vindr import write_vindr

CLASSES = ("normal", "abnormal")


def write_replicas(root: Path, *, vindr: int = 6, siim: int = 4) -> dict[str, Path]:
    """Both replicas under ``root``; ``{kind: folder}``."""
    folders = {"vindr": root / "vindr", "siim": root / "siim"}
    write_vindr(folders["vindr"], vindr, seed=5)
    write_siim(folders["siim"], siim, seed=5)
    return folders


def dicom_files(folders: dict[str, Path]) -> list[Path]:
    return sorted(p for folder in folders.values() for p in folder.rglob("*") if p.suffix in (".dcm", ".dicom"))


def uids(path: Path) -> tuple[str, str, str]:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)


def item_id(path: Path) -> str:
    return "/".join(uids(path))


def labels_by_uid(folders: dict[str, Path]) -> dict[str, tuple[str, Path]]:
    """SOP Instance UID → (class: normal for VinDr 'no_finding' / SIIM 'negative', else abnormal; file)."""
    table = {}
    for kind, folder in folders.items():
        dataset = open_dataset(kind, folder, size=(32, 32))
        for record in dataset.records:
            table[uids(record.path)[2]] = (CLASSES[0] if record.label == 0 else CLASSES[1], record.path)
    return table


def write_labels_csv(path: Path, folders: dict[str, Path], *, test_every: int = 4) -> dict[str, str]:
    """``uid,label,split``: every ``test_every``-th instance (by UID) in the test split. Returns uid → label."""
    table = labels_by_uid(folders)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uid", "label", "split"])
        for number, uid in enumerate(sorted(table)):
            writer.writerow([uid, table[uid][0], "test" if number % test_every == 1 else "pool"])
    return {uid: label for uid, (label, _) in table.items()}
