#!/usr/bin/env bash
# The study of issue 14 (docs/results/study.md): strategies {random, entropy, dual} × training
# {plain, ROI Dice loss, ROI swap} on the calibrated synthetic shortcut benchmark, 50 initial labels
# + 13 rounds of 40 = 570, with the stable protocol: smallcnn (width 8, an 8×8 CAM at 64²), 20
# epochs with a cosine schedule per round, warm-started from the previous round, augmentation
# without the left-right flip.
#
# One process per (strategy, training, seed) arm, each with one torch thread, JOBS at a time (2 on
# a 2-core host). An arm depends only on its strategy, training, λ and seed (initial labels, initial
# weights and every draw are derived from the seed), so splitting arms over processes changes no
# number. Each arm is its own `xal run` folder: rerunning the script resumes unfinished arms from
# their ledgers and skips finished ones. `xal report` merges them at the end.
#
#   bash docs/results/run_study.sh 1        # part 1: random × {plain, dice, swap}, seeds 0–4
#   bash docs/results/run_study.sh 2        # part 2: dual and entropy with the best training, seeds 0–9
#   bash docs/results/run_study.sh 3        # part 3: random plain and best, seeds 5–9
#   bash docs/results/run_study.sh 4        # part 4: dual and entropy, plain and dice, seeds 0–4
#   bash docs/results/run_study.sh 5        # part 5: dual + best, λ 0.25 and 0.75, seeds 0–4
#   bash docs/results/run_study.sh report   # merge whatever has finished into $OUT
#   bash docs/results/run_study.sh list < arms.txt   # any arms, one "strategy training λ seed" a line
# Each part is ~50–100 min on 2 cores. BEST (default swap) is the training that won on random
# sampling in part 1 (study.md says how it was decided); RUNS, OUT, JOBS and EXTRA override.
set -uo pipefail
RUNS=${RUNS:-runs/study}
OUT=${OUT:-docs/results/study}
JOBS=${JOBS:-2}
BEST=${BEST:-swap}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-.venv/bin/python}
PROTOCOL="--dataset synthetic --size 64 --pool-size 5000 --initial 50 --rounds 13 --per-round 40 \
  --architecture smallcnn --width 8 --epochs 20 --schedule cosine --warm-start --augment noflip \
  --scorer inprocess --export-format torchscript --no-progress"

training_flags() {  # plain | dice | swap
  case "$1" in
    plain) echo "" ;;
    dice) echo "--roi-loss dice --roi-weight 1" ;;
    swap) echo "--roi-augment swap" ;;
    *) echo "unknown training $1" >&2; exit 2 ;;
  esac
}

arms() {  # one line per arm: strategy training lambda seed
  case "$1" in
    1) for t in plain dice swap; do for s in 0 1 2 3 4; do echo "random $t 0.5 $s"; done; done ;;
    2) for s in 0 1 2 3 4 5 6 7 8 9; do echo "dual $BEST 0.5 $s"; echo "entropy $BEST 0.5 $s"; done ;;
    3) for s in 5 6 7 8 9; do echo "random plain 0.5 $s"; echo "random $BEST 0.5 $s"; done ;;
    4) for t in plain dice swap; do [ "$t" = "$BEST" ] && continue
         for s in 0 1 2 3 4; do echo "dual $t 0.5 $s"; echo "entropy $t 0.5 $s"; done; done ;;
    5) for l in 0.25 0.75; do for s in 0 1 2 3 4; do echo "dual $BEST $l $s"; done; done ;;
    list) grep -v '^#' ;;
    *) echo "usage: $0 1|2|3|4|5|list|report" >&2; exit 2 ;;
  esac
}

run_arm() {  # strategy training lambda seed
  local strategy=$1 training=$2 lambda=$3 seed=$4
  local name="$strategy-$training-l$lambda-s$seed"
  [ -f "$RUNS/$name/DONE" ] && return 0
  local started=$(date +%s)
  # shellcheck disable=SC2046,SC2086
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 $PYTHON -m xal_cli.main run $PROTOCOL $EXTRA \
    --strategies "$strategy" --weight "$lambda" --seed "$seed" $(training_flags "$training") \
    --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] && date -u +%FT%TZ > "$RUNS/$name/DONE"
  echo "$name rc=$rc $(( $(date +%s) - started )) s"
}
export -f run_arm training_flags
export RUNS PROTOCOL EXTRA PYTHON

mkdir -p "$RUNS"
if [ "${1:-}" = report ]; then
  # one report per λ: the merged main study (λ = 0.5) and the sweep beside it
  $PYTHON -m xal_cli.main report "$RUNS"/*-l0.5-s*/ --out "$OUT" \
    --title "xal study: strategies × ROI training, synthetic shortcut benchmark (λ = 0.5)"
  for l in 0.25 0.75; do
    ls -d "$RUNS"/dual-*-l$l-s*/ >/dev/null 2>&1 && $PYTHON -m xal_cli.main report "$RUNS"/dual-*-l$l-s*/ \
      --out "$OUT/lambda-$l" --title "xal study: dual with λ = $l"
  done
  exit 0
fi
arms "${1:-}" | xargs -P "$JOBS" -L 1 bash -c 'run_arm "$@"' _
