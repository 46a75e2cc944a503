#!/usr/bin/env bash
# The claim measurement of issue 7: random vs entropy vs dual on the calibrated synthetic shortcut
# benchmark, default protocol (50 initial + 13 rounds of 40 = 570 labels), 5 seeds.
#
# Equivalent to `xal run --dataset synthetic --strategies random,entropy,dual --seeds 5`, run as one
# process per (strategy, seed) arm and merged with `xal report`: an arm depends only on its strategy
# and seed (initial labels, initial weights and draws are derived from them), so splitting the arms
# over processes changes no number, only the wall time. Scoring is in-process (the identical-ranking
# tests cover the gRPC path) with TorchScript exports, so on a GPU host forward and kernels run on
# the card.
#
#   OUT=docs/results/claim bash docs/results/run_claim.sh           # defaults below
#   SEEDS="0 1" STRATEGIES="random dual" ROUNDS=2 bash docs/results/run_claim.sh   # a smaller one
#   EXTRA="--output-stride 16 --option val_shortcut=0.5" ...         # the revised protocol (claim.md)
# ARM_TIMEOUT (seconds) stops arms still running by then; the report covers the rounds they finished
# (each round is committed to its arm's ledger as it ends).
set -uo pipefail
OUT=${OUT:-claim-out}
RUNS=${RUNS:-/tmp/xal-claim-runs}
SEEDS=${SEEDS:-"0 1 2 3 4"}
STRATEGIES=${STRATEGIES:-"random entropy dual"}
ROUNDS=${ROUNDS:-13}
POOL=${POOL:-5000}
EXTRA=${EXTRA:-}
ARM_TIMEOUT=${ARM_TIMEOUT:-0}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" "$RUNS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
started=$(date +%s)
for seed in $SEEDS; do
  for strategy in $STRATEGIES; do
    timeout "$ARM_TIMEOUT" $PYTHON -m xal_cli.main run --dataset synthetic --strategies "$strategy" --seed "$seed" \
      --out "$RUNS/$strategy-seed$seed" --size 64 --pool-size "$POOL" --rounds "$ROUNDS" --scorer inprocess \
      --export-format torchscript --no-progress $EXTRA > "$RUNS/$strategy-seed$seed.log" 2>&1 &
  done
done
wait
echo "arms finished in $(( $(date +%s) - started )) s"
for log in "$RUNS"/*.log; do tail -n 3 "$log" | sed "s#^#$(basename "$log" .log): #"; done | grep -i -E "error|Traceback" || true
$PYTHON -m xal_cli.main report "$RUNS"/*-seed*/ --out "$OUT" --title "xal claim: random vs entropy vs dual, synthetic shortcut benchmark"
