#!/usr/bin/env bash
# The study of issue 25 (docs/results/study-cxr.md): acquisition strategies on cxr-sim, the chest X-ray
# benchmark on real annotation geometry, with pool ROIs a deployment can have.
#
# Protocol (calibrated on the validation split only: bench/calibrate_cxr.py, `calib` below):
# cxr-sim RSNA variant at 64², pool 5 000 / val 500 / test 1 000, 50 initial labels + 13 rounds of 40
# = 570, smallcnn width 8, 20 epochs per round with a cosine schedule, warm-started from the previous
# round, the `intensity` augmentation (no geometric warp), the ROI swap. One process per arm, one torch
# thread each, JOBS at a time. Arms are `<strategy>-<training>-<roi source>-s<seed>`; rerunning resumes
# unfinished arms from their ledgers and skips finished ones.
#
#   bash docs/results/run_study_cxr.sh calib 0.4      # random+swap, seed 0, at opacity 0.4 (read metrics_val.csv)
#   bash docs/results/run_study_cxr.sh main           # the key arms, seeds 0-9, interleaved by seed
#   bash docs/results/run_study_cxr.sh vindr          # the multi-class variant: random vs the best of the rest
#                                                     # (entropy on the RSNA study), then dual, seeds 0-4, then 5-9
#   bash docs/results/run_study_cxr.sh learnable      # the learnable drawing (opacity 0.7, size compensation 1):
#                                                     # random vs dual(anatomy) seeds 0-9, then entropy
#   bash docs/results/run_study_cxr.sh headroom       # the drawing and pool that meet both calibration windows
#                                                     # (opacity 0.5, size compensation 1, pool 18 000): random vs
#                                                     # dual(anatomy), then entropy, then dual(expert) and random plain
#   bash docs/results/run_study_cxr.sh list < arms    # any arms, one "strategy training source seed" a line
set -uo pipefail
RUNS=${RUNS:-runs/study-cxr}
JOBS=${JOBS:-2}
OPACITY=${OPACITY:-0.4}
VARIANT=${VARIANT:-rsna}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-.venv/bin/python}
POOL=${POOL:-5000}
EXPORT=${EXPORT:-torchscript}
# Each mode's benchmark settings, in one place (the pool size and the export are part of PROTOCOL).
case "${1:-}" in
  vindr) # the multi-class variant, as drawn (it has no difficulty option)
    OPACITY=1.0; VARIANT=vindr; RUNS="$RUNS-vindr" ;;
  learnable) # the drawing calibrated for learnability (docs/results/study-cxr.md)
    OPACITY=0.7; EXTRA="$EXTRA --option size_compensation=1"; RUNS="$RUNS-learnable" ;;
  headroom) # calibrated on val (bench/results/cxr_calibration-pool18000.json) on a pool of 18 000,
    # scored with ONNX Runtime: at 64² on one thread the SmallCNN's forward pass runs 961 images/s in
    # TorchScript and 3 177 in ONNX Runtime (`python bench/forward.py`, bench/results/forward-cpu.json):
    # scoring 17 500 unlabelled items a round takes ~18 s in TorchScript (~28 s beside another arm)
    # and ~6 s in ONNX Runtime plus a few seconds to export; an arm ~6 min.
    OPACITY=0.5; EXTRA="$EXTRA --option size_compensation=1"; RUNS="$RUNS-headroom"
    POOL=18000; EXPORT=onnx ;;
  calib)
    OPACITY=${2:?calib needs an opacity}; RUNS="$RUNS/calibration-opacity-$OPACITY" ;;
esac
PROTOCOL="--dataset cxr-sim --size 64 --pool-size $POOL --val-size 500 --test-size 1000 \
  --initial 50 --rounds 13 --per-round 40 --architecture smallcnn --width 8 --epochs 20 --schedule cosine \
  --warm-start --augment intensity --scorer inprocess --export-format $EXPORT --no-progress"

training_flags() {  # plain | swap
  case "$1" in
    plain) echo "" ;;
    swap) echo "--roi-augment swap" ;;
    *) echo "unknown training $1" >&2; exit 2 ;;
  esac
}

arms() {  # one line per arm: strategy training roi-source seed
  case "$1" in
    main|headroom|learnable)
          # the paired comparison the claim rests on first (random vs dual with anatomy ROIs, ten
          # seeds), then entropy (does misalignment add anything to uncertainty?), then the
          # expert-ROI and plain arms (not run on the learnable drawing)
          for s in 0 1 2 3 4 5 6 7 8 9; do echo "random swap anatomy $s"; echo "dual swap anatomy $s"; done
          for s in 0 1 2 3 4 5 6 7 8 9; do echo "entropy swap anatomy $s"; done
          [ "$1" = learnable ] && return 0
          for s in 0 1 2 3 4 5 6 7 8 9; do echo "dual swap expert $s"; echo "random plain anatomy $s"; done ;;
    vindr) # seeds 0-4 first (the first report), then 5-9, each seed's three arms together
           for s in 0 1 2 3 4; do echo "random swap anatomy $s"; echo "${BEST_OF_REST:-entropy} swap anatomy $s"; done
           for s in 0 1 2 3 4; do echo "dual swap anatomy $s"; done
           for s in 5 6 7 8 9; do echo "random swap anatomy $s"; echo "${BEST_OF_REST:-entropy} swap anatomy $s"
                                  echo "dual swap anatomy $s"; done ;;
    list) grep -v '^#' || true ;;  # an empty list is no arms, not an error
    *) echo "usage: $0 calib OPACITY|main|learnable|headroom|vindr|list" >&2; exit 2 ;;
  esac
}

run_arm() {  # strategy training source seed
  local strategy=$1 training=$2 source=$3 seed=$4
  local name="$strategy-$training-$source-s$seed"
  [ -f "$RUNS/$name/DONE" ] && return 0
  local started=$(date +%s)
  # The data folder depends on the benchmark options and the ROI source, never on the seed (the seed
  # picks the initial labels): every arm of one source gets a copy of the first one's instead of
  # regenerating 6 500 items (about as long as the loop itself). prepare_data checks data.json
  # against the arm's own configuration, so a mismatched copy is refused, not used.
  local template="$RUNS/.data-$source-$VARIANT-$OPACITY-$POOL-$(printf %s "$EXTRA" | cksum | cut -d' ' -f1)"
  if [ ! -d "$RUNS/$name/data" ] && [ -f "$template/data.json" ]; then
    mkdir -p "$RUNS/$name" && cp -r "$template" "$RUNS/$name/data"
  fi
  # shellcheck disable=SC2046,SC2086
  # each of the JOBS arms on a core of its own (xargs' slot): no migrations, and ONNX Runtime sees
  # one usable core, so it runs one intra-op thread instead of two spinning against the other arm
  local pin=()
  if [ -n "${SLOT:-}" ] && command -v taskset > /dev/null && [ "$JOBS" -le "$(nproc)" ]; then pin=(taskset -c "$SLOT"); fi
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 "${pin[@]}" $PYTHON -m xal_cli.main run $PROTOCOL $EXTRA \
    --option opacity="$OPACITY" --option variant="$VARIANT" --roi-source "$source" \
    --strategies "$strategy" --seed "$seed" $(training_flags "$training") \
    --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] && date -u +%FT%TZ > "$RUNS/$name/DONE"
  if [ $rc -eq 0 ] && [ ! -d "$template" ]; then cp -r "$RUNS/$name/data" "$template.$$" && mv -T "$template.$$" "$template" 2>/dev/null || rm -rf "$template.$$"; fi
  echo "$name rc=$rc $(( $(date +%s) - started )) s"
}
export -f run_arm training_flags
export RUNS PROTOCOL EXTRA PYTHON OPACITY VARIANT POOL JOBS

mkdir -p "$RUNS"
if [ "${1:-}" = calib ]; then run_arm random swap anatomy 0; exit 0; fi
arms "${1:-}" | xargs -r -P "$JOBS" --process-slot-var=SLOT -L 1 bash -c 'run_arm "$@"' _
