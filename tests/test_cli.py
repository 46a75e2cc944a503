"""The ``xal`` command line, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _xal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xal_cli.main", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )


def test_demo_prints_ranking_and_summary() -> None:
    done = _xal("rank-demo", "--items", "1500", "--k", "60", "--show", "7", "--seed", "4")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Acquisition list: top 7 of 60" in out
    assert "Why these 60 items" in out
    assert "scored 1500 items" in out
    assert "3 item(s) with NaN/Inf inputs ranked last" in out
    for case in ("aligned", "shortcut", "no_finding", "unknown_roi"):
        assert case in out


def test_demo_rank_fusion_and_exclude_policy() -> None:
    done = _xal("rank-demo", "--items", "800", "--k", "20", "--fusion", "rank", "--missing-roi", "exclude", "--show", "3")
    assert done.returncode == 0, done.stderr
    assert "excluded by the missing-ROI policy" in done.stdout
    assert " 0 excluded" not in done.stdout


def test_bad_arguments_give_one_clear_line() -> None:
    done = _xal("rank-demo", "--items", "100", "--weight", "2")
    assert done.returncode == 2
    assert "weight" in done.stderr and "Traceback" not in done.stderr


def test_bench_quick_run_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "scoring_cpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scoring_cpu.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert {case["case"]["roi"] for case in record["cases"]} == {"mask", "boxes"}
    for case in record["cases"]:
        assert set(case["agreement_vs_float64_reference"]) == {"xal-numba", "xal-separable"}
        for agreement in case["agreement_vs_float64_reference"].values():
            assert agreement["soft_dice_max_abs_diff"] < 1e-5 and agreement["pointing_hit_mismatches"] == 0
        assert set(case["speedup_vs_torch_eager"]) == {"xal-numba", "xal-separable"}
        assert case["numba_vs_separable"] > 0
    assert "ratio" in done.stdout


def test_main_job_demo_runs_both_parts_through_the_service_and_merges_them(tmp_path: Path) -> None:
    """`xal demo` (what `make demo` runs), shrunk: the plain and swap parts each run through a real
    `xal serve`, then one table and one merged report cover the three arms; a rerun resumes."""
    args = ("demo", "--out", str(tmp_path / "demo"), "--rounds", "1", "--pool-size", "200", "--val-size", "20",
            "--test-size", "40", "--epochs", "2", "--no-progress")
    done = _xal(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("the demo's arms")[-1]
    for arm in ("| random+cosine+warm+aug-noflip |", "| random+swap+cosine+warm+aug-noflip |", "| dual+swap+cosine+warm+aug-noflip |"):
        assert arm in table, table
    for part in ("plain", "swap"):
        assert (tmp_path / "demo" / part / "ledger.sqlite").is_file()
        assert "scoring through gRPC" in done.stdout
    assert (tmp_path / "demo" / "report.html").is_file()
    again = _xal(*args)  # finished: resumes from the ledgers, trains nothing, prints the same arms
    assert again.returncode == 0 and "| dual+swap+cosine+warm+aug-noflip |" in again.stdout.split("the demo's arms")[-1]


def test_score_preset_flag_fixes_the_weight_by_name() -> None:
    """``xal score --preset`` (λ by name); ``--strategy`` is the loop's word for the acquisition class
    and is no flag of ``xal score``."""
    from xal_cli.main import build_parser
    from xal_cli.scoring_flags import scoring_config

    parser = build_parser()
    preset = scoring_config(parser.parse_args(["score", "--out", "r.csv", "--preset", "uncertainty", "--threshold", "0.4"]))
    assert preset.weight == 1.0 and preset.threshold == 0.4
    assert scoring_config(parser.parse_args(["score", "--out", "r.csv", "--weight", "0.3"])).weight == 0.3
    with pytest.raises(SystemExit):
        parser.parse_args(["score", "--out", "r.csv", "--strategy", "uncertainty"])
