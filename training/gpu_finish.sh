#!/usr/bin/env bash
# After the GPU step (training/gpu_finetune.sh), here: join the checkpoint that came back, export it as a
# v2 model with the bundled model's stage 1 and cascade settings, score it on the validation cases and
# print the rule written for it before any GPU run (training/README.md, *Model v2 on a lent GPU*).
#
#   bash training/gpu_finish.sh FOLDER      (the run's files_at folder; FT_EVAL_CASES=... for a tiny try)
set -euo pipefail
FROM=${1:?give the folder that the files of the GPU run came back in}
cd "$(dirname "$0")/.."
WORK=${FT_WORK:-runs/gpu_finetune}
DATA=${DATA:-../shared/data/emidec/slices}
mkdir -p "$WORK"
cat "$FROM"/best.safetensors.part-* > "$WORK/best.safetensors"
(cd "$WORK" && sha256sum -c "$(realpath "$FROM/best.sha256")")
cp "$FROM/train_log.csv" "$FROM/train.log" "$FROM/device.txt" "$WORK/"
python training/export.py "$WORK/best.safetensors" "$WORK/scarnet_v2_hybrid_gpu.safetensors" \
    --name "ScarNet v2 EMIDEC (cascade, hybrid stage 2 fine-tuned on GPU)" --version 2.1-gpu \
    --licence "CC BY-NC-SA 4.0 (weights derived from EMIDEC data; research, non-commercial)" \
    --locate Resources/Models/scarnet_v2_emidec.safetensors   # its stage 1 and cascade settings
python -m training.evaluate --model "$WORK/scarnet_v2_hybrid_gpu.safetensors" --data "$DATA" \
    --split training/configs/emidec_split.json --subset validation --out "$WORK/eval_val" \
    ${FT_EVAL_CASES:+--cases $FT_EVAL_CASES}
python - "$WORK/eval_val" <<'PY'
import csv, json, sys
from pathlib import Path
folder = Path(sys.argv[1])
summary = json.loads((folder / "summary.json").read_text())
dice = {name: summary["structures"][name]["dice_mean"] for name in ("myocardium", "scar", "mvo")}
agreement = summary["scar_percent_agreement"]
with open(folder / "per_case.csv", newline="") as f:
    normal_scar = {row["case"]: float(row["pred_scar_ml"]) for row in csv.DictReader(f) if float(row["ref_scar_ml"]) == 0}
print(f"validation: myocardium / scar / MVO Dice {dice}; scar % bias {agreement['bias']}, limits of agreement "
      f"{agreement['loa_low']} to {agreement['loa_high']}; scar in the normal cases (mL) {normal_scar}")
passes = (dice["scar"] or 0) >= 0.666 and (dice["myocardium"] or 0) >= 0.818 and all(v <= 1.0 for v in normal_scar.values())
print("rule (training/README.md, written before any GPU run): scar >= 0.666, myocardium >= 0.818, no normal case "
      f"over 1 mL of scar (yardstick: the validation pair without refine, 0.821 / 0.646 / 0.277): "
      f"{'PASSES: train the refine stage on it next' if passes else 'fails: record it as tried; v2.12 stays'}")
PY
