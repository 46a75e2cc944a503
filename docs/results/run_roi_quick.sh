#!/usr/bin/env bash
# Issue 14's quick measurement at small scale (docs/results/roi_training.md): smallcnn, 570 random
# labels of the calibrated synthetic benchmark, 20 epochs, AdamW + cosine; plain vs ROI swap vs
# ROI loss, without augmentation (the setting) and with fit's default augmentation (what
# `xal run` trains with). One process at a time, resumable (models already in the file are skipped).
set -euo pipefail
OUT=${OUT:-docs/results/roi_quick/results.jsonl}
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-1}
q() { "$PY" docs/results/roi_training_quick.py --threads "$THREADS" --out "$OUT" "$@"; }
q --augment none    --seeds 0 --arms plain,swap,dice
q --augment default --seeds 0 --arms swap,dice
q --augment none    --seeds 0 --arms swap-other
# swap-noise and swap-blur (outside replaced by noise / a σ = 4 px blur) were measured here with
# fills since removed from xal (they did not work; roi_training.md): their rows stay in results.jsonl.
q --augment none    --seeds 1 --arms plain,swap
q --augment default --seeds 1 --arms plain,swap
q --augment none    --seeds 0 --arms outside
q --augment default --seeds 0 --arms plain
q --augment default --seeds 1 --arms dice
q --augment none    --seeds 1 --arms dice,swap-other
q --augment default --seeds 0 --arms outside,swap-other
"$PY" docs/results/roi_training_quick.py --table "$OUT"
