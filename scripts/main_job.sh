#!/usr/bin/env bash
# The main job on the embedded default: synthetic TextZoom-format data, bicubic evaluated, TSRN trained on a short
# CPU schedule and evaluated with PP-OCR, the EasyOCR CRNN and Tesseract on easy / medium / hard, W&B offline.
# Sizes can be changed through the environment: TRAIN, TEST, STEPS, BATCH, OUT. The defaults take about 40 minutes
# on a 2-core CPU (TSRN trains at about 6 images/s there, see `stisr-bench train`); on a GPU raise STEPS and BATCH.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
TRAIN=${TRAIN:-4000}
TEST=${TEST:-300}
STEPS=${STEPS:-800}
BATCH=${BATCH:-16}
OUT=${OUT:-runs/main_job}
DATA=data/synthetic-${TRAIN}-${TEST}
BIN=${BIN:-.venv/bin}

[ -f "$DATA/test/hard/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$DATA" --train "$TRAIN" --test "$TEST" --workers 2
data_args=(
  "--data.train_dirs=[$DATA/train]" "--data.batch_size=$BATCH"
  "--data.test_sets={\"synthetic/easy\": $DATA/test/easy, \"synthetic/medium\": $DATA/test/medium, \"synthetic/hard\": $DATA/test/hard}"
)
$BIN/stisr-eval --config experiments/bicubic.yaml "${data_args[@]}" --trainer.default_root_dir="$OUT/bicubic"
$BIN/stisr-train fit --config experiments/tsrn.yaml "${data_args[@]}" --trainer.max_steps="$STEPS" \
  --trainer.default_root_dir="$OUT/tsrn"
echo
echo "Bicubic vs TSRN on synthetic easy / medium / hard (accuracy %, PSNR dB, SSIM):"
$BIN/stisr-compare "$OUT/bicubic" "$OUT/tsrn"
