#!/usr/bin/env bash
# The main job on the embedded default: synthetic TextZoom-format data, bicubic evaluated, TSRN trained on a short
# CPU schedule and evaluated by the calibrated ASTER / MORAN / CRNN stand-ins (ppocr, easyocr-moran, easyocr-crnn) on
# easy / medium / hard, W&B offline.
# Sizes can be changed through the environment: TRAIN, TEST, STEPS, BATCH, WORKERS, DATA, OUT. On a CPU the
# defaults take about 40 minutes on 2 cores (TSRN trains at about 6 images/s there, see `stisr-bench train`), far too
# short for TSRN to converge; with a CUDA GPU the defaults become the GPU schedule (20,000 steps at batch 64, about
# 20 minutes of TSRN training on an H100).
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
BIN=${BIN:-.venv/bin}
if $BIN/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  TRAIN=${TRAIN:-30000} TEST=${TEST:-1500} STEPS=${STEPS:-20000} BATCH=${BATCH:-64} WORKERS=${WORKERS:-8}
else
  TRAIN=${TRAIN:-4000} TEST=${TEST:-300} STEPS=${STEPS:-800} BATCH=${BATCH:-16} WORKERS=${WORKERS:-2}
fi
OUT=${OUT:-runs/main_job}
DATA=${DATA:-data/synthetic-${TRAIN}-${TEST}}

[ -f "$DATA/test/hard/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$DATA" --train "$TRAIN" --test "$TEST" --workers "$WORKERS"
data_args=(
  "--data.train_dirs=[$DATA/train]" "--data.batch_size=$BATCH" "--data.num_workers=$WORKERS"
  "--data.test_sets={\"synthetic/easy\": $DATA/test/easy, \"synthetic/medium\": $DATA/test/medium, \"synthetic/hard\": $DATA/test/hard}"
)
$BIN/stisr-eval --config experiments/bicubic.yaml "${data_args[@]}" --trainer.default_root_dir="$OUT/bicubic"
$BIN/stisr-train fit --config experiments/tsrn.yaml "${data_args[@]}" --trainer.max_steps="$STEPS" \
  --trainer.default_root_dir="$OUT/tsrn"
echo
echo "Bicubic vs TSRN on synthetic easy / medium / hard (accuracy %, PSNR dB, SSIM):"
$BIN/stisr-compare "$OUT/bicubic" "$OUT/tsrn"
