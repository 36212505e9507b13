#!/usr/bin/env bash
# Tests a TSRN checkpoint beside bicubic on a synthetic data folder's held-out test pairs, then ships it: the
# generator in fp16 as models/generators/weights/tsrn_synthetic.pt and its record tsrn_synthetic.json (recipe,
# checkpoint, training step, test numbers of both). Usage: record_shipped_tsrn.sh CHECKPOINT DATA OUT "RECIPE"
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline}
BIN=${BIN:-.venv/bin}
CKPT=$1 DATA=$2 OUT=$3 RECIPE=$4
data_args=(
  "--data.train_dirs=[$DATA/train]" "--data.num_workers=1"
  "--data.test_sets={\"synthetic/easy\": $DATA/test/easy, \"synthetic/medium\": $DATA/test/medium, \"synthetic/hard\": $DATA/test/hard}"
)
[ -f "$OUT/bicubic/results.json" ] || $BIN/stisr-eval --config experiments/bicubic.yaml "${data_args[@]}" \
  --trainer.default_root_dir="$OUT/bicubic"
$BIN/stisr-eval --config experiments/tsrn.yaml "${data_args[@]}" --model.init_args.generator.init_args.use_stn=false \
  --weights "$CKPT" --trainer.default_root_dir="$OUT/tsrn"
$BIN/stisr-compare "$OUT/bicubic" "$OUT/tsrn"
$BIN/python - "$CKPT" "$OUT" "$RECIPE" <<'PY'
import json
import sys
from pathlib import Path

import torch

from stisr_lightning.weights import SHIPPED_GENERATORS, export_fp16

checkpoint, out, recipe = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
SHIPPED_GENERATORS.mkdir(exist_ok=True)
weights = export_fp16(checkpoint, SHIPPED_GENERATORS / "tsrn_synthetic.pt")
kept = ("acc", "psnr", "ssim")
tests = {run: {key: value for key, value in json.loads((out / run / "results.json").read_text())["metrics"].items()
               if key.rsplit("/", 1)[-1] in kept} for run in ("bicubic", "tsrn")}
record = {"config": "experiments/tsrn.yaml (use_stn: false)", "recipe": recipe, "checkpoint": checkpoint,
          "global_step": torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"],
          "test": "held-out test pairs of the training data folder (300 per subset, never trained on)",
          "metrics": tests}
weights.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
print(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) and {weights.with_suffix('.json')}")
PY
