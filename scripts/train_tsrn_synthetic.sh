#!/usr/bin/env bash
# The recipe of the TSRN weights that ship with the suite (stisr_lightning/models/generators/weights/tsrn_synthetic.pt):
# TSRN as in experiments/tsrn.yaml (TextZoom's recipe), trained on 20,000 synthetic pairs (seed 0) at batch 32 for
# STEPS steps, training precision chosen by stisr-train (bf16-mixed on the development CPU, AMD EPYC with
# avx512_bf16), validated on 1 % of the training pairs; the last step is exported in fp16 by `stisr-weights export`.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-2000}
DATA=${DATA:-data/synthetic-20000-300}
OUT=${OUT:-runs/tsrn_synthetic}
[ -f "$DATA/test/hard/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$DATA" --train 20000 --test 300 --seed 0
$BIN/stisr-train fit --config experiments/tsrn.yaml \
  "--data.train_dirs=[$DATA/train]" --data.batch_size=32 --data.num_workers=1 --data.val_fraction=0.01 \
  "--data.test_sets={\"synthetic/easy\": $DATA/test/easy, \"synthetic/medium\": $DATA/test/medium, \"synthetic/hard\": $DATA/test/hard}" \
  --trainer.max_steps="$STEPS" --trainer.val_check_interval=250 \
  --trainer.logger=lightning.pytorch.loggers.CSVLogger --trainer.logger.save_dir="$OUT" \
  --trainer.default_root_dir="$OUT" "$@"
