#!/usr/bin/env bash
# TSRN (experiments/tsrn.yaml, TextZoom's recipe) trained on the embedded default at the scale a shipped generator
# needs: 20,000 synthetic pairs (seed 0, train split), batch 32, STEPS steps, validated every 250 steps on 1 % of the
# training pairs (200), every 250th step kept in $OUT/steps/ so that a run can be resumed
# (`--ckpt_path $OUT/steps/step=N.ckpt`) and any step exported (`stisr_lightning.weights.export_fp16`).
# Training precision is stisr-train's default for the machine. Extra arguments go to stisr-train
# (e.g. --model.init_args.generator.init_args.use_stn=false).
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-6000}
DATA=${DATA:-data/synthetic-20000-300}
OUT=${OUT:-runs/tsrn_synthetic}
[ -f "$DATA/test/hard/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$DATA" --train 20000 --test 300 --seed 0
$BIN/stisr-train fit --config experiments/tsrn.yaml \
  "--data.train_dirs=[$DATA/train]" --data.batch_size=32 --data.num_workers=1 --data.val_fraction=0.01 \
  "--data.test_sets={\"synthetic/easy\": $DATA/test/easy, \"synthetic/medium\": $DATA/test/medium, \"synthetic/hard\": $DATA/test/hard}" \
  --trainer.max_steps="$STEPS" --trainer.val_check_interval=250 \
  --trainer.logger=lightning.pytorch.loggers.CSVLogger --trainer.logger.save_dir="$OUT" \
  "--trainer.callbacks+={\"class_path\": \"lightning.pytorch.callbacks.ModelCheckpoint\", \"init_args\": {\"every_n_train_steps\": 250, \"save_top_k\": -1, \"dirpath\": \"$OUT/steps\", \"filename\": \"{step}\"}}" \
  --trainer.default_root_dir="$OUT" "$@"
