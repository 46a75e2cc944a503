"""``bench/kernels.py --quick`` runs end to end and writes its JSON (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"


def test_quick_bench_smoke(tmp_path):
    out = tmp_path / "kernels.json"
    gpu = torch.cuda.is_available()
    providers = "xal-numba,xal-separable,torch-eager,xal-triton,monai-gradcam"
    ran = {"xal-triton", "torch-eager"} if gpu else {"xal-numba", "xal-separable", "torch-eager"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--providers", providers, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "kernels" and record["copy_bandwidth_GBps"] > 0
    for case in record["cases"]:
        assert ran <= set(case["providers"]) <= ran | {"monai-gradcam"}
        assert all(r["images_per_s"] > 0 for r in case["providers"].values())
        if "monai-gradcam" not in case["providers"]:
            assert case["skipped"]["monai-gradcam"] == "MONAI is not installed"
        if not gpu:
            assert "needs a CUDA GPU" in case["skipped"]["xal-triton"]
            assert "GPU rows" in done.stdout and "need a GPU" in done.stdout
