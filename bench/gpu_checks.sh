#!/usr/bin/env bash
# xal's checks on a CUDA host, in one script of at most ~8 minutes (docs/kernels.md, "GPU runs";
# docs/service.md, "Scoring beside the forward pass"). Run from the repository root; results go to
# $OUT (default ./gpu-out), every file named with the card (e.g. kernels-nvidia-h200.json) and
# every JSON recording the card's name. Needs python3 with CUDA torch and Triton; dependencies the
# host lacks may be placed as wheels in .whl/ (installed without network access, --no-deps): the
# pure-Python ones (monai, zarr, numcodecs, donfig, google-crc32c, captum, …) and, for steps 3-4,
# onnxruntime-gpu and grpcio built for the host's Python.
#   1. the kernel tests compiled for the card (TRITON_INTERPRET=0, inputs moved to CUDA)   ≤ 120 s
#   2. bench/kernels.py on the card (xal-triton vs torch eager, torch.compile, MONAI, Captum) ≤ 100 s
#   3. bench/end_to_end.py --device cuda: images → ONNX Runtime's CUDA provider → score_batch
#      (Triton) → Dice, pipelined and serial, against the forward pass alone and Captum  ≤ 120 s
#   4. bench/service_scale.py: xal serve scoring a 20 000-item pool, its model on ONNX
#      Runtime's CUDA provider (the reply's runtime is recorded), peak RSS and items/s       ≤ 120 s
# CALIBRATION=1 runs the shortcut benchmark's calibration grid first (docs/data.md; ~270 s more).
# Each step's output is in $OUT/<step>-<card>.log; $OUT/summary-<card>.txt lists every exit status.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi -L
CARD=$(python3 -c "import torch; print(torch.cuda.get_device_name(0))") || { echo "torch sees no CUDA device"; exit 1; }
SLUG=$(printf '%s' "$CARD" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
printf '%s\n' "$CARD" > "$OUT/card.txt"
SUMMARY="$OUT/summary-$SLUG.txt"
: > "$SUMMARY"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee -a "$SUMMARY"

# step NAME LIMIT_S COMMAND…: runs it under a time limit, its output in $OUT/NAME-$SLUG.log
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most $limit s): $*"
  timeout "$limit" "$@" > "$OUT/$name-$SLUG.log" 2>&1
  local status=$?
  echo "$name: exit $status$([ $status = 124 ] && echo ' (timed out)')" | tee -a "$SUMMARY"
  tail -25 "$OUT/$name-$SLUG.log"
}

# skip NAME REASON: records why a step did not run
skip() { echo "$1: skipped: $2" | tee -a "$SUMMARY"; }

if [ "${CALIBRATION:-0}" = 1 ]; then
  step calibration "${CALIBRATION_TIMEOUT:-270}" python3 bench/calibrate_shortcut.py --device cuda --workers "${WORKERS:-12}" \
    --seeds 0,1,2 --pairs 0.11:0.05,0.12:0.05,0.13:0.05 --shortcuts 0.98,0.99 --marker-scales 1,1.75 \
    --marker-free-epochs 12 --out "$OUT/shortcut_calibration-$SLUG.json"
fi

step kernel-tests "${TESTS_TIMEOUT:-120}" env TRITON_INTERPRET=0 XAL_KERNEL_TEST_DEVICE=cuda python3 -m pytest -q -x \
  -p no:cacheprovider tests/kernels/test_kernel_cam_alignment.py tests/kernels/test_kernel_uncertainty.py

step kernels "${BENCH_TIMEOUT:-100}" python3 bench/kernels.py --repeats 7 --out "$OUT/kernels-$SLUG.json"

if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  step end-to-end "${E2E_TIMEOUT:-120}" python3 bench/end_to_end.py --device cuda --batch 32 --batches 16 --rounds 5 \
    --out "$OUT/end_to_end-$SLUG.json"
  if python3 -c "import grpc" 2>/dev/null; then
    step service "${SERVICE_TIMEOUT:-120}" python3 bench/service_scale.py --items 20000 --k 100 \
      --out "$OUT/service-scale-$SLUG.json"
  else
    skip service "grpcio is not importable (place its wheel in .whl/)"
  fi
else
  skip end-to-end "ONNX Runtime's CUDA provider is not available (place an onnxruntime-gpu wheel in .whl/)"
  skip service "ONNX Runtime's CUDA provider is not available"
fi
echo "== done; results in $OUT:"
ls -1 "$OUT"
