#!/usr/bin/env bash
# One GPU, one command: the generators compared on the embedded default under a wall-clock budget.
#   1. synthetic data (TRAIN pairs, TEST test pairs over easy / medium / hard);
#   2. the offline recognizers the methods need, pretrained on it (CRNN: TATT/TextDiff's text prior and L_joint;
#      ABINet: LEMMA's guidance prior; STT transformer: LEMMA's text-focus loss) while TSRN trains and bicubic is
#      evaluated;
#   3. LEMMA and TextDiff trained with those recognizers, all runs sharing the one GPU;
#   4. TextDiff's MRD cascaded onto TSRN and LEMMA (TextDiff Table 4), TextDiff-200, and the comparison table.
# Training runs are capped by time (Lightning's max_time), so the step each run reached differs and is printed
# beside its scores (results.json: global_step). This is a budget comparison, not the papers' schedules (TSRN and
# LEMMA: 500 epochs of TextZoom; TextDiff: 1M iterations).
# Environment: TRAIN, TEST, PRETRAIN_MIN, TSRN_MIN, MAIN_MIN (minutes), RUNS (output folder), BIN (console scripts),
# RECOGNIZERS (evaluators, default "ppocr easyocr-moran easyocr-crnn", the ASTER / MORAN / CRNN stand-ins), WORKERS (DataLoader workers per run), VAL_EVERY
# (steps between validations), SAMPLING_STEPS (the long TextDiff evaluation, default 200), EXTRA_ARGS (options added
# to every stisr-train / stisr-eval command, e.g. "--trainer.logger=false").
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline} PYTHONUNBUFFERED=1
BIN=${BIN:-.venv/bin}
TRAIN=${TRAIN:-30000}
TEST=${TEST:-1500}
PRETRAIN_MIN=${PRETRAIN_MIN:-4}
TSRN_MIN=${TSRN_MIN:-10}
MAIN_MIN=${MAIN_MIN:-7}
RUNS=${RUNS:-runs/gpu_compare}
WORKERS=${WORKERS:-3}
VAL_EVERY=${VAL_EVERY:-500}
SAMPLING_STEPS=${SAMPLING_STEPS:-200}
EXTRA_ARGS=${EXTRA_ARGS:-}
DATA=data/synthetic-${TRAIN}-${TEST}
mkdir -p "$RUNS"

EASYOCR=stisr_lightning.models.recognizers.easyocr_crnn.EasyOCRCRNN
declare -A RECOGNIZER=(
  [ppocr]="{class_path: stisr_lightning.models.recognizers.ppocr.PPOCRRecognizer}"
  [easyocr-moran]="{class_path: $EASYOCR, init_args: {calibrated_for: MORAN}}"
  [easyocr-crnn]="{class_path: $EASYOCR, init_args: {calibrated_for: CRNN}}"
  [easyocr]="{class_path: $EASYOCR}"
  [tesseract]="{class_path: stisr_lightning.models.recognizers.tesseract.TesseractRecognizer}"
)
evaluators=""
read -r -a evaluator_names <<< "${RECOGNIZERS:-ppocr easyocr-moran easyocr-crnn}"
for name in "${evaluator_names[@]}"; do
  evaluators+="${evaluators:+, }$name: ${RECOGNIZER[$name]}"
done
data_args=(
  "--data.train_dirs=[$DATA/train]" "--data.num_workers=$WORKERS"
  "--data.test_sets={\"synthetic/easy\": $DATA/test/easy, \"synthetic/medium\": $DATA/test/medium, \"synthetic/hard\": $DATA/test/hard}"
)
budget() { printf -- "--trainer.max_time=00:00:%02d:00" "$1"; }
# run NAME COMMAND...: one log per run; a failed run is reported and the others go on.
run() {
  local name=$1; shift
  echo "[$(date +%T)] start $name"
  # shellcheck disable=SC2086
  if "$@" $EXTRA_ARGS "--trainer.default_root_dir=$RUNS/$name" > "$RUNS/$name.log" 2>&1; then
    echo "[$(date +%T)] done $name"
  else
    echo "[$(date +%T)] FAILED $name: $(tail -n 1 "$RUNS/$name.log")"
  fi
}
train() {  # train NAME CONFIG MINUTES [overrides...]: a generator, evaluated by the chosen recognizers
  local name=$1 config=$2 minutes=$3; shift 3
  run "$name" "$BIN/stisr-train" fit --config "$config" "${data_args[@]}" "--model.init_args.recognizers={$evaluators}" \
    "$(budget "$minutes")" --trainer.val_check_interval=$VAL_EVERY --trainer.limit_val_batches=8 "$@"
}
pretrain() {  # pretrain NAME RECIPE: a recognizer, saved as $RUNS/NAME/<weights_name>
  run "$1" "$BIN/stisr-train" fit --config "experiments/recognizers/$2.yaml" "${data_args[@]}" "$(budget "$PRETRAIN_MIN")" \
    --trainer.max_steps=100000 --trainer.val_check_interval=$VAL_EVERY --trainer.limit_val_batches=8
}

[ -f "$DATA/test/hard/data.mdb" ] || $BIN/stisr-data make-synthetic --out "$DATA" --train "$TRAIN" --test "$TEST" \
  --workers "$(nproc)"

train tsrn experiments/tsrn.yaml "$TSRN_MIN" --trainer.max_steps=100000 &
first_phase=()
run bicubic "$BIN/stisr-eval" --config experiments/bicubic.yaml "${data_args[@]}" "--model.init_args.recognizers={$evaluators}" &
first_phase+=($!)
for recipe in crnn abinet stt; do
  pretrain "$recipe" "${recipe}_synth" &
  first_phase+=($!)
done
wait "${first_phase[@]}"  # bicubic and the three recognizers; TSRN goes on

train lemma experiments/lemma.yaml "$MAIN_MIN" --trainer.max_steps=100000 \
  "--model.init_args.val_recognizer=${evaluator_names[0]}" \
  "--model.init_args.generator.init_args.prior.init_args.weights=$RUNS/abinet/abinet.pth" \
  "--model.init_args.loss.init_args.terms.text_focus.init_args.recognizer_weights=$RUNS/stt/stt.pth" &
train textdiff experiments/textdiff.yaml "$MAIN_MIN" --trainer.max_steps=1000000 --data.batch_size=16 \
  "--model.init_args.teacher_weights=$RUNS/crnn/crnn.pth" \
  "--model.init_args.loss.init_args.terms.joint.init_args.recognizer_weights=$RUNS/crnn/crnn.pth" &
wait

for base in tsrn lemma; do
  run "$base+mrd" "$BIN/stisr-eval" --config "$RUNS/$base/config.yaml" --ckpt_path "$RUNS/$base/checkpoints/best.ckpt" \
    --refine-with "$RUNS/textdiff" &
done
run "textdiff-$SAMPLING_STEPS" "$BIN/stisr-eval" --config "$RUNS/textdiff/config.yaml" \
  --ckpt_path "$RUNS/textdiff/checkpoints/best.ckpt" "--model.init_args.generator.init_args.num_inference_steps=$SAMPLING_STEPS" &
wait

echo
echo "Budget comparison on synthetic easy / medium / hard (accuracy %, PSNR dB, SSIM); steps reached:"
for name in tsrn lemma textdiff; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'step', r.get('global_step'))" \
    "$RUNS/$name/results.json" "$name" 2>/dev/null || echo "$name: no results.json"
done
runs=()
for name in bicubic tsrn lemma textdiff "textdiff-$SAMPLING_STEPS" tsrn+mrd lemma+mrd; do
  [ -f "$RUNS/$name/results.json" ] && runs+=("$RUNS/$name")
done
$BIN/stisr-compare "${runs[@]}"
