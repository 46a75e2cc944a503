"""The kernels pass Triton's real compiler for an H100 (sm_90), with no register spills.

The interpreter runs the kernels' Python with numpy and accepts things the compiler rejects (type
mismatches in loop-carried values, non-power-of-two blocks, ...). No GPU is needed to compile:
``sm90_compile.py`` (run in a subprocess, without TRITON_INTERPRET) builds every kernel down to a
cubin with the ``ptxas`` shipped in the triton wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="the kernels need the 'kernels' extra (triton)")
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(), reason="no ptxas/cuobjdump in this triton build")
def test_every_kernel_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("sm90_compile.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 20, done.stdout
    spilled = [row for row in rows if row.get("local_bytes", 0) != 0]
    assert not spilled, f"register spills: {spilled}"
    assert all(0 < row["registers"] <= 255 for row in rows), rows
