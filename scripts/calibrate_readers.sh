#!/usr/bin/env bash
# Reproduces the suite's calibrated readers for the TextZoom MORAN and CRNN columns (EasyOCR's english_g2 CRNN
# fine-tuned on the synthetic default; see experiments/recognizers/easyocr_columns.yaml):
#   1. 20,000 synthetic training pairs (seed 0) and 900 check pairs (seed 1, never seen in training);
#   2. the recipe, which saves the weights after each of its `save_weights_at` steps;
#   3. `stisr-data calibrate` of every saved step on the check pairs (bicubic and HR accuracy beside the paper's);
#   4. with SHIP="CRNN=STEP MORAN=STEP": those steps in fp16 into the package, and their record
#      (weights/easyocr_columns.json: the numbers on the first 100 check pairs of each subset, which
#      tests/test_calibration.py re-measures on freshly generated pairs).
# About 45 minutes on 2 cores (AMD EPYC with avx512_bf16; the recipe trains in bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
TRAIN_DATA=data/synthetic-20000-900
CHECK_DATA=data/calibration-check-seed1
RUN=runs/easyocr_columns
WEIGHTS=stisr_lightning/models/recognizers/weights
export WANDB_MODE=${WANDB_MODE:-offline}

[ -f "$TRAIN_DATA/train/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$TRAIN_DATA" --train 20000 --test 900
[ -f "$CHECK_DATA/test/hard/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$CHECK_DATA" --train 0 --test 900 --seed 1
if [ -z "${SHIP:-}" ]; then
  $BIN/stisr-train fit --config experiments/recognizers/easyocr_columns.yaml --trainer.enable_progress_bar=false
  for weights in "$RUN"/easyocr_step*.pth; do
    echo "== $weights"
    $BIN/stisr-data calibrate "$CHECK_DATA" --columns "MORAN=easyocr@$weights" "CRNN=easyocr@$weights"
  done
  exit 0
fi
mkdir -p "$WEIGHTS"
for choice in $SHIP; do
  column=${choice%=*} step=${choice#*=}
  lower=$(echo "$column" | tr '[:upper:]' '[:lower:]')
  $BIN/python -c "import sys, torch; state = torch.load(sys.argv[1], weights_only=True); \
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, sys.argv[2])" \
    "$RUN/easyocr_step$step.pth" "$WEIGHTS/easyocr_${lower}_column.pt"
done
rm -f "$WEIGHTS/easyocr_columns.json"
$BIN/stisr-data calibrate "$CHECK_DATA" --limit 100 --json "$WEIGHTS/easyocr_columns.json"
$BIN/stisr-data calibrate "$CHECK_DATA"
