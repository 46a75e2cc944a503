"""No tracked file cites a document that lives outside the repository.

The scoring contract is ``docs/contract.md``. A citation of a design document kept beside the
repository (its file name, or the relative path that reaches out of the checkout) points users at
a file they do not have, so every tracked file is searched for both; this test is the one file
allowed to name them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("DESIGN" + ".md", ".." + "/shared")  # split so that this file does not match itself
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()


def tracked_files() -> list[str]:
    """``git ls-files`` of the repository root (skips the test where there is no git checkout)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the tracked files cannot be listed")
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout (no .git): the tracked files cannot be listed")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in listed.stdout.decode("utf-8").split("\0") if name]


def test_no_tracked_file_cites_an_external_design_document():
    offending = []
    for name in tracked_files():
        path = ROOT / name
        if name == THIS_FILE or not path.is_file():  # a file deleted but not yet staged is skipped
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if any(needle in line for needle in FORBIDDEN):
                offending.append(f"{name}:{number}: {line.strip()}")
    assert not offending, ("cite docs/contract.md instead of a document outside the repository:\n"
                           + "\n".join(offending))
