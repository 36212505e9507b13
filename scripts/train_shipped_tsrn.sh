#!/usr/bin/env bash
# The recipe of the TSRN that ships with the suite (shipped:tsrn_synthetic, models/generators/weights/), on the
# embedded default (20,000 synthetic pairs, seed 0, batch 32, no STN: the pairs are pixel-aligned):
#   stage 1: TSRN's own loss (experiments/tsrn.yaml), Adam lr 1e-3, STAGE1 steps;
#   stage 2: from stage 1's last weights, plus a frozen reader's CTC loss (experiments/addons/
#            tsrn_recognition_loss.yaml; the judge, EasyOCR english_g2, fills no table column), lr 1e-4, STAGE2 steps;
#   then stage 2's last step is tested on the 900 held-out test pairs beside bicubic, exported in fp16 and recorded
#   (tsrn_synthetic.json: recipe, steps, test numbers).
# About 1.6 hours on 2 CPU cores with native bf16 (stage 1: ~1.4 s/step, stage 2: ~2.7 s/step at batch 32).
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
BIN=${BIN:-.venv/bin}
STAGE1=${STAGE1:-2000}
STAGE2=${STAGE2:-1000}
DATA=${DATA:-data/synthetic-20000-900}
OUT=${OUT:-runs/tsrn_shipped_recipe}
SHIPPED=stisr_lightning/models/generators/weights/tsrn_synthetic.pt
[ -f "$DATA/test/hard/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$DATA" --train 20000 --test 900 --seed 0
DATA="$DATA" OUT="$OUT/stage1" STEPS="$STAGE1" BIN="$BIN" bash scripts/train_tsrn_synthetic.sh \
  --model.init_args.generator.init_args.use_stn=false
DATA="$DATA" OUT="$OUT/stage2" STEPS="$STAGE2" BIN="$BIN" bash scripts/train_tsrn_synthetic.sh \
  --config experiments/addons/tsrn_recognition_loss.yaml --model.init_args.generator.init_args.use_stn=false \
  --model.init_args.optimizer.init_args.lr=1.0e-4 --model.init_args.generator_weights="$OUT/stage1/steps/step=$STAGE1.ckpt"
BIN="$BIN" bash scripts/record_shipped_tsrn.sh "$OUT/stage2/steps/step=$STAGE2.ckpt" "$DATA" "$OUT/test" \
  "stage 1: $STAGE1 steps of experiments/tsrn.yaml (no STN, lr 1e-3); stage 2: $STAGE2 steps with experiments/addons/tsrn_recognition_loss.yaml (lr 1e-4); 20,000 synthetic pairs (seed 0), batch 32"
echo "wrote $SHIPPED"
