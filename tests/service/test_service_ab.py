"""``bench/service_ab.py``: paired per-round ratios, rotation, and its errors (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "service_ab.py"
_spec = importlib.util.spec_from_file_location("service_ab", SCRIPT)
service_ab = sys.modules["service_ab"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(service_ab)


def _record(p50: float, items: float, when: str = "2026-12-07T00:00:00+00:00") -> dict:
    """The parts of a ``bench/service.py`` JSON that an A/B reads."""
    rows = [{"clients": c, "p50_ms": p50 * c, "p99_ms": 2 * p50 * c, "items_per_s": items} for c in (1, 4, 16)]
    return {"when": when, "load_average": {"start": [1.0, 1.0, 1.0]}, "server_event_loop": "uvloop",
            "score_batch": rows, "score_batch_fp16_features": {"p50_ms": p50 / 2, "p99_ms": p50}}


def test_ratios_are_paired_within_rounds_then_medians():
    # Round 2 is slow for both sides (a noisy minute): pairing cancels it, a ratio of medians would not.
    runs = {"a": [_record(10, 100), _record(40, 25), _record(10, 100)],
            "b": [_record(9, 110), _record(36, 27.5), _record(11, 90)]}
    summary = service_ab.summarize(runs)
    ratios = summary["per_round_ratio"]["b_over_a"]
    assert ratios["1_clients_p50_ms"] == pytest.approx([0.9, 0.9, 1.1])
    assert summary["median_ratio"]["b_over_a"]["1_clients_p50_ms"] == pytest.approx(0.9)
    assert summary["median_ratio"]["b_over_a"]["16_clients_items_per_s"] == pytest.approx(1.1)
    assert summary["median_ratio"]["b_over_a"]["fp16_1_client_p50_ms"] == pytest.approx(0.9)
    assert summary["median_and_range"]["a"]["1_clients_p50_ms"] == {"median": 10, "min": 10, "max": 40}
    assert summary["baseline"] == "a" and summary["rounds"] == 3


def test_every_side_is_compared_with_each_side_before_it():
    runs = {"base": [_record(10, 100)], "x": [_record(5, 200)], "y": [_record(20, 50)]}
    ratios = service_ab.summarize(runs)["median_ratio"]
    assert set(ratios) == {"x_over_base", "y_over_base", "y_over_x"}
    assert ratios["y_over_base"]["4_clients_p50_ms"] == pytest.approx(2.0)
    assert ratios["y_over_x"]["16_clients_items_per_s"] == pytest.approx(0.25)


def test_unpaired_or_single_sides_are_refused():
    with pytest.raises(ValueError, match="same, non-zero number of rounds"):
        service_ab.summarize({"a": [_record(10, 100)] * 2, "b": [_record(10, 100)]})
    with pytest.raises(ValueError, match="at least two sides"):
        service_ab.summarize({"a": [_record(10, 100)]})


def test_order_rotates_so_each_side_leads_in_turn():
    sides = [service_ab.Side(n, Path(".")) for n in "abc"]
    leaders = [service_ab.rotated(sides, i)[0].name for i in range(3)]
    assert leaders == ["a", "b", "c"]


def test_a_side_that_is_not_a_checkout_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--side", f"a={tmp_path}", "--side", "b=.",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "has no bench/service.py" in done.stderr and not (tmp_path / "x.json").exists()


def test_summarize_command_writes_the_json(tmp_path):
    files = {}
    for name, p50 in (("a", 10), ("b", 8)):
        files[name] = [tmp_path / f"{name}{i}.json" for i in range(2)]
        for path in files[name]:
            path.write_text(json.dumps(_record(p50, 100)))
    out = tmp_path / "ab.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "summarize", *(f"--side={n}=" + ",".join(map(str, fs))
                                                                          for n, fs in files.items()),
                           "--note", "synthetic", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert record["note"] == "synthetic" and record["median_ratio"]["b_over_a"]["1_clients_p50_ms"] == pytest.approx(0.8)
    assert not list(tmp_path.glob("*.partial"))
