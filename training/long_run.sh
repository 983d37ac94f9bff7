#!/usr/bin/env bash
# A training run that spans sessions, one call per session (plans and rules: training/README.md,
# "Model v3: training across sessions"). A fresh checkout has no runs/, so this resumes the run from
# its committed state in training/checkpoints/NAME/ for at most MINUTES and copies the new state back
# there for the developer to commit:
#   MINUTES=90 bash training/long_run.sh NAME CONFIG      (e.g. curve_57x8 training/configs/v3_curve_20k.yaml)
# CONFIG's output_dir must be runs/NAME. A refine config that reads the validation pair's probabilities
# (data.prior_dir: runs/priors) first gets them rebuilt from committed files:
#   1. the validation pair (the bundled file's stage 1, settings and two stage-2 networks trained on
#      the 57 training cases only) and its probabilities for the training and validation cases;
#   2. its starting point, v2.12's refine recipe trained on the training cases only
#      (training/checkpoints/refine_validation.safetensors; trained here only if it is missing).
# Killing it (or the MINUTES limit) loses at most the epoch in progress. Never run it beside another
# training or the test suite (2 cores).
set -euo pipefail
NAME=${1:?"give the name of the run (its state is kept in training/checkpoints/NAME)"}
CONFIG=${2:?"give the training config of the run"}
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-90}
PY=${PY:-python}
DATA=${DATA:-../shared/data/emidec/slices}
SPLIT=training/configs/emidec_split.json
KEEP=training/checkpoints/$NAME
RUN=runs/$NAME
grep -q "^output_dir: $RUN\$" "$CONFIG" || { echo "error: $CONFIG must say 'output_dir: $RUN'"; exit 2; }
export MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000
mkdir -p "$RUN" "$KEEP"

if grep -q 'prior_dir: runs/priors' "$CONFIG"; then
  mkdir -p runs/priors
  [ -f runs/validation_pair.safetensors ] || $PY training/validation_pipeline.py runs/validation_pair.safetensors
  for subset in train validation; do
    if [ ! -f "runs/prior_$subset/done" ]; then
      $PY training/evaluate.py --model runs/validation_pair.safetensors --data "$DATA" --split "$SPLIT" \
        --subset "$subset" --out "runs/prior_$subset" --save-probabilities --precision fp32
      touch "runs/prior_$subset/done"
    fi
    ln -sf "$(pwd)"/runs/prior_$subset/probabilities/*.npy runs/priors/
  done
  if [ ! -f training/checkpoints/refine_validation.safetensors ]; then
    [ -f runs/pair_2_5d.safetensors ] || $PY training/validation_pipeline.py runs/pair_2_5d.safetensors --member 1
    $PY training/train.py --config training/configs/v2_refine.yaml --set output_dir=runs/refine_validation \
      model.remote_contrast=true model.init_checkpoint=runs/pair_2_5d.safetensors data.root="$DATA"
    cp runs/refine_validation/best.safetensors training/checkpoints/refine_validation.safetensors
  fi
fi

if [ -f "$KEEP/train_state.pt" ] && [ ! -f "$RUN/train_state.pt" ]; then
  cp "$KEEP/train_state.pt" "$RUN/train_state.pt"
  [ -f "$KEEP/best.safetensors" ] && cp "$KEEP/best.safetensors" "$RUN/"   # log.csv is rewritten from the state
fi
status=0
timeout --signal=TERM "${MINUTES}m" $PY training/train.py --config "$CONFIG" --set data.root="$DATA" || status=$?
[ "$status" = 0 ] || [ "$status" = 124 ] || exit "$status"   # 124: the time limit, the run resumes next session
[ -f "$RUN/train_state.pt" ] || { echo "no epoch finished in ${MINUTES} min: nothing to keep"; exit 1; }
# the state is written atomically after every epoch, so it is always a whole epoch's
cp "$RUN/train_state.pt" "$RUN/log.csv" "$KEEP/"
[ -f "$RUN/best.safetensors" ] && cp "$RUN/best.safetensors" "$KEEP/"
# a finished run is not resumed again (nothing would write its last epoch): keep its network too
[ "$status" = 0 ] && cp "$RUN/last.safetensors" "$KEEP/"
$PY - "$KEEP/log.csv" <<'EOF'
import sys
from ScarNetCore.io.files import read_csv
from training.train import validation_score
rows = read_csv(sys.argv[1])   # written by write_csv: NaN is an empty cell
best = max(rows, key=lambda r: validation_score({k[4:]: float(v or "nan") for k, v in r.items() if k.startswith("val_")}))
print(f"after epoch {rows[-1]['epoch']}: last {rows[-1]['val_myocardium_dice']} / {rows[-1]['val_scar_dice']}, "
      f"best epoch {best['epoch']} {best['val_myocardium_dice']} / {best['val_scar_dice']} (crop validation)")
EOF
