#!/usr/bin/env bash
# xal's checks on a CUDA host, in one script (docs/kernels.md, "GPU runs"). Run from the repository
# root; outputs go to $OUT (default ./gpu-out). Needs python3 with CUDA torch and Triton; pure-Python
# dependencies the host lacks may be placed as wheels in .whl/ (installed without network access).
#   1. the shortcut benchmark's calibration grid (docs/data.md), trained on the card in fp32;
#   2. the kernel tests compiled for the card (TRITON_INTERPRET=0, inputs moved to CUDA);
#   3. bench/kernels.py on the card (xal-triton vs torch eager, torch.compile, MONAI, Captum).
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
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"

timeout "${CALIBRATION_TIMEOUT:-270}" python3 bench/calibrate_shortcut.py --device cuda --workers "${WORKERS:-12}" \
  --seeds 0,1,2 --pairs 0.11:0.05,0.12:0.05,0.13:0.05 --shortcuts 0.98,0.99 --marker-scales 1,1.75 \
  --marker-free-epochs 12 --out "$OUT/shortcut_calibration-gpu.json" 2>&1 | tee "$OUT/calibration.log" | tail -20

TRITON_INTERPRET=0 XAL_KERNEL_TEST_DEVICE=cuda timeout "${TESTS_TIMEOUT:-120}" python3 -m pytest -q -x -p no:cacheprovider \
  tests/kernels/test_kernel_cam_alignment.py tests/kernels/test_kernel_uncertainty.py 2>&1 | tee "$OUT/kernel_tests.log" | tail -15

timeout "${BENCH_TIMEOUT:-120}" python3 bench/kernels.py --repeats 7 --out "$OUT/kernels-gpu.json" 2>&1 | tee "$OUT/bench_kernels.log" | tail -30
