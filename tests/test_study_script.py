"""``docs/results/run_study_cxr.sh``: an empty arm list runs nothing.

Why: ``list`` mode reads arms from stdin; GNU ``xargs`` without ``-r`` ran the arm command once on
empty input, which launched ``xal run`` with no strategy or seed and left a ``---s.log`` behind.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "results" / "run_study_cxr.sh"


def test_an_empty_arm_list_runs_no_arm(tmp_path):
    runs = tmp_path / "runs"
    done = subprocess.run(["bash", str(SCRIPT), "list"], input="", capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "RUNS": str(runs), "PYTHON": "true", "JOBS": "1"})
    assert done.returncode == 0, done.stderr
    assert runs.is_dir() and list(runs.iterdir()) == [], sorted(p.name for p in runs.iterdir())
