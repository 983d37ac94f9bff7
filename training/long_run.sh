#!/usr/bin/env bash
# Model v3's long run, one call per session (plan and rule: training/README.md, "Model v3: training
# across sessions"). A fresh checkout has no runs/, so this rebuilds what the run needs from committed
# files, resumes the stack refine run from its committed state for at most MINUTES, and copies the new
# state back into training/checkpoints/v3_stack_refine/ for the developer to commit:
#   1. the validation pair (the bundled file's stage 1, settings and two stage-2 networks trained on
#      the 57 training cases only) and its probabilities for the training and validation cases;
#   2. the starting point, v2.12's refine recipe trained on the training cases only
#      (training/checkpoints/refine_validation.safetensors; trained here only if it is missing);
#   3. the stack refine run (training/configs/v3_stack_refine.yaml), resumed from
#      training/checkpoints/v3_stack_refine/train_state.pt when that exists.
# Killing it (or the MINUTES limit) loses at most the epoch in progress. Never run it beside another
# training or the test suite (2 cores).
#   MINUTES=90 training/long_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-90}
PY=${PY:-python}
DATA=${DATA:-../shared/data/emidec/slices}
SPLIT=training/configs/emidec_split.json
KEEP=training/checkpoints/v3_stack_refine
RUN=runs/v3_stack_refine
export MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000
mkdir -p runs runs/priors "$KEEP"

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

mkdir -p "$RUN"
if [ -f "$KEEP/train_state.pt" ] && [ ! -f "$RUN/train_state.pt" ]; then
  cp "$KEEP/train_state.pt" "$RUN/train_state.pt"
  [ -f "$KEEP/best.safetensors" ] && cp "$KEEP/best.safetensors" "$RUN/best.safetensors"
fi
status=0
timeout --signal=TERM "${MINUTES}m" $PY training/train.py --config training/configs/v3_stack_refine.yaml \
  --set data.root="$DATA" || status=$?
[ "$status" = 0 ] || [ "$status" = 124 ] || exit "$status"   # 124: the time limit, the run resumes next session
[ -f "$RUN/train_state.pt" ] || { echo "no epoch finished in ${MINUTES} min: nothing to keep"; exit 1; }
# the state is written atomically after every epoch, so it is always a whole epoch's
cp "$RUN/train_state.pt" "$RUN/log.csv" "$KEEP/"
[ -f "$RUN/best.safetensors" ] && cp "$RUN/best.safetensors" "$KEEP/"
$PY - "$KEEP/log.csv" <<'EOF'
import sys
from ScarNetCore.io.files import read_csv
from training.train import validation_score
rows = read_csv(sys.argv[1])   # written by write_csv: NaN is an empty cell
best = max(rows, key=lambda r: validation_score({k[4:]: float(v or "nan") for k, v in r.items() if k.startswith("val_")}))
print(f"after epoch {rows[-1]['epoch']}: last {rows[-1]['val_myocardium_dice']} / {rows[-1]['val_scar_dice']}, "
      f"best epoch {best['epoch']} {best['val_myocardium_dice']} / {best['val_scar_dice']} (crop validation)")
EOF
