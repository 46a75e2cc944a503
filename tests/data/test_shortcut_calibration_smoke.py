"""``bench/calibrate_shortcut.py --quick`` runs end to end and writes the documented JSON.

A smoke test only: it checks the structure, never the accuracies (benchmarks are not tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "calibrate_shortcut.py"


def test_quick_calibration_writes_json(tmp_path):
    out = tmp_path / "calibration.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workers", "1", "--seeds", "0,1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "marker-free" in done.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["benchmark"] == "shortcut_calibration"
    plan = report["plan"]
    runs, settings = report["runs"], report["settings"]
    # per seed and marker scale: one marker-free run per (contrast, noise), one random run per
    # (pair, shortcut, budget)
    pairs, shortcuts, budgets = len(plan["pairs"]), len(plan["shortcuts"]), len(plan["budgets"])
    seeds, scales = len(report["seeds"]), len(plan["marker_scales"])
    assert seeds == 2
    assert len(runs) == seeds * scales * pairs * (1 + shortcuts * budgets)
    assert sum(run["kind"] == "marker_free" for run in runs) == seeds * scales * pairs
    for run in runs:
        assert 0.0 <= run["test_accuracy"] <= 1.0 and 0.0 <= run["test_follows_marker"] <= 1.0
        assert run["epochs_run"] >= run["best_epoch"] >= 1
    assert len(settings) == scales * pairs * shortcuts
    low, high = plan["budgets"]
    for setting in settings:
        assert {"shortcut", "contrast", "noise", f"test_accuracy_{low}", f"test_accuracy_{high}",
                "marker_free_test_accuracy", "meets_both"} <= setting.keys()
        assert setting["meets_both"] == (setting["shortcut_bites"] and setting["lesion_learnable"])
        high_runs = setting[f"test_accuracy_{high}"]["runs"]
        assert len(high_runs) == seeds and setting[f"test_accuracy_{high}"]["mean"] == round(sum(high_runs) / seeds, 4)
    assert report["meeting_both"] == [s for s in settings if s["meets_both"]]
