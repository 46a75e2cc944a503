"""Compile every Triton kernel of xal_kernels for an H100 (sm_90) without a GPU.

The interpreter is lenient about types and block shapes; Triton's real compiler is not. This runs
the full pipeline (Triton IR → LLVM → PTX → ``ptxas`` cubin, all shipped in the triton wheel) for
the launch configurations the host launchers pick, and prints one JSON line per kernel with the
registers per thread and bytes of local memory (spills) that ``cuobjdump`` reports.

Run as a script, in a process where TRITON_INTERPRET is unset (the test does that).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

# Nothing happens at import (pytest --doctest-modules imports this file): main() sets up the
# process, and must run in a fresh interpreter where no kernel module was imported yet.
cam = unc = triton = tl = None

P32, P64, PI32, PI8, PU8 = "*fp32", "*fp64", "*i32", "*i8", "*u8"
CANDIDATES = {"cand_rows_ptr": PI32, "n_cand_rows": "i32", "cand_cols_ptr": PI32, "n_cand_cols": "i32"}


def axes(acc: str) -> dict:
    """The resampling arrays; the blend weights are in the accumulation dtype."""
    return {"row_lo_ptr": PI32, "row_hi_ptr": PI32, "row_mu_ptr": acc, "col_lo_ptr": PI32, "col_hi_ptr": PI32, "col_lam_ptr": acc}


def fused_signature(feature_type: str, acc: str) -> dict:
    return {
        "features_ptr": feature_type, "weights_ptr": feature_type, "grid_ptr": acc, "mask_ptr": PU8,
        "ranges_ptr": PI32, "counts_ptr": PI32, "known_ptr": PI8, "dice_ptr": P32, "soft_dice_ptr": P32,
        "energy_ptr": P32, "hit_ptr": P32, "invalid_ptr": PI8, "C": "i32", "HW": "i32", "w": "i32",
        "H": "i32", "W": "i32", "WB": "i32", "M": "i32", "params_ptr": acc, **CANDIDATES, **axes(acc),
    }


def cases():
    # The blocks the launcher picks for the two benchmark shapes on a GPU (see launch_cam_alignment);
    # float64 inputs accumulate in fp64 (the float64 contract).
    for feature_type, (bc, bhw, by, bx) in (("*fp16", (32, 64, 32, 32)), ("*bf16", (8, 256, 8, 128)), ("*fp32", (32, 64, 32, 32)),
                                            (P64, (32, 64, 32, 32))):
        acc = P64 if feature_type == P64 else P32
        for boxes in (False, True):
            consts = dict(ROI_BOXES=boxes, BLOCK_C=bc, BLOCK_HW=bhw, BLOCK_CY=16, BLOCK_CX=16, BLOCK_Y=by, BLOCK_X=bx,
                          ACC=tl.float64 if acc == P64 else tl.float32)
            yield f"fused {feature_type} boxes={boxes}", cam._cam_alignment_kernel, fused_signature(feature_type, acc), consts, 8
    for acc, dtype in ((P32, tl.float32), (P64, tl.float64)):
        yield f"stats acc={acc}", cam._cam_stats_kernel, {
            "features_ptr": "*fp16" if acc == P32 else P64, "weights_ptr": "*fp32" if acc == P32 else P64, "grid_ptr": acc,
            "stats_ptr": acc, "peak_ptr": PI32, "C": "i32", "HW": "i32", "w": "i32", "W": "i32",
            "params_ptr": acc, **CANDIDATES, **axes(acc),
        }, dict(BLOCK_C=8, BLOCK_HW=256, BLOCK_CY=32, BLOCK_CX=32, ACC=dtype), 8
    for boxes in (False, True):
        yield f"band boxes={boxes}", cam._cam_band_kernel, {
            "grid_ptr": P32, "stats_ptr": P32, "peak_ptr": PI32, "mask_ptr": PU8, "ranges_ptr": PI32, "counts_ptr": PI32,
            "counts_out_ptr": PI32, "sums_out_ptr": P32, "HW": "i32", "w": "i32", "H": "i32", "W": "i32", "WB": "i32",
            "M": "i32", "params_ptr": P32, "rows_per_band": "i32", **axes(P32),
        }, dict(ROI_BOXES=boxes, BLOCK_Y=8, BLOCK_X=128, ACC=tl.float32), 8
    yield "finish", cam._cam_finish_kernel, {
        "stats_ptr": P64, "counts_ptr": PI32, "sums_ptr": P32, "known_ptr": PI8, "dice_ptr": P32, "soft_dice_ptr": P32,
        "energy_ptr": P32, "hit_ptr": P32, "invalid_ptr": PI8, "B": "i32", "n_bands": "i32",
    }, dict(BLOCK_B=128), 4
    for kind in (0, 1, 2):
        for fuse, exclude in ((False, False), (True, True)):
            yield f"uncertainty kind={kind} fuse={fuse}", unc._uncertainty_kernel, {
                "logits_ptr": "*bf16", "u_ptr": P32, "misalignment_ptr": P32, "flagged_ptr": PI8, "weight_ptr": P64,
                "score_ptr": P64, "flags_ptr": PI8, "B": "i32", "K": "i32", "stride": "i32", "log_k": "fp32",
            }, dict(KIND=kind, FUSE=fuse, EXCLUDE=exclude, BLOCK_B=256, BLOCK_K=8), 4
    yield "dual score", unc._dual_score_kernel, {
        "u_ptr": P64, "misalignment_ptr": P64, "flagged_ptr": PI8, "weight_ptr": P64, "score_ptr": P64, "flags_ptr": PI8, "B": "i32",
    }, dict(EXCLUDE=True, BLOCK=1024), 4


def resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+).*LOCAL:(\d+)", text)
    return {"registers": int(found.group(1)), "local_bytes": int(found.group(2))} if found else {}


def main() -> int:
    global cam, unc, triton, tl
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cam = importlib.import_module("xal_kernels.triton_alignment")
    unc = importlib.import_module("xal_kernels.triton_uncertainty")
    target = GPUTarget("cuda", 90, 32)
    for label, kernel, signature, consts, warps in cases():
        signature = dict(signature, **{name: "constexpr" for name in consts})
        compiled = triton.compile(ASTSource(kernel, signature=signature, constexprs=consts), target=target, options={"num_warps": warps})
        print(json.dumps({"kernel": label, "num_warps": warps, **resources(compiled.asm["cubin"])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
