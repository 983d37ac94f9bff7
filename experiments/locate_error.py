"""How far model v2's stage 1 puts the LV centre from the reference, and which slices it keeps.

    python experiments/locate_error.py --model runs/v2.safetensors --data ../shared/data/emidec/slices \
        --split training/configs/emidec_split.json --subset validation

Per case: distance (mm) between the stage-1 centre and the centre of the reference LV (labels 1–4,
all slices projected), reference slices with LV that stage 1 drops, and slices it keeps without
reference LV. The crop-centre jitter of stage-2 training should cover these distances.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.model.checkpoint import load_checkpoint
from ScarNetCore.pipeline.predictor import CascadePredictor
from ScarNetCore.pipeline.stack import Stack
from training.data import DEFAULT_THICKNESS_MM, case_ids, read_slice_cases, select_cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", type=Path)
    parser.add_argument("--subset", default="validation")
    args = parser.parse_args(argv)
    cascade, meta = load_checkpoint(args.model)
    predictor = CascadePredictor(cascade, "cpu", "fp32", batch_size=8)
    in_plane = meta.preprocessing.png_nominal_spacing_mm
    ids = select_cases(case_ids(args.data, "slices"), args.split, args.subset, None)
    errors, dropped, extra = [], 0, 0
    for case in read_slice_cases(args.data, ids, in_plane, DEFAULT_THICKNESS_MM):
        with torch.inference_mode():
            location = predictor.locate(Stack.from_image(case.image))
        ref = case.labels > 0
        if not location.found:
            print(f"{case.id}: no LV found")
            errors.append(np.inf)
            continue
        centre = np.array(ndimage.center_of_mass(ref.any(0)))
        error = float(np.linalg.norm((np.array(location.centre) - centre) * in_plane))
        has = ref.any((1, 2))
        dropped += int((has & ~location.slices).sum())
        extra += int((~has & location.slices).sum())
        errors.append(error)
        print(f"{case.id}: centre error {error:.1f} mm; reference LV slices {int(has.sum())}, kept "
              f"{int(location.slices.sum())} (dropped {int((has & ~location.slices).sum())}, "
              f"extra {int((~has & location.slices).sum())}){'; at edge' if location.at_edge else ''}")
    finite = [e for e in errors if np.isfinite(e)]
    print(f"{len(ids)} cases: centre error median {np.median(finite):.1f} mm, 95th percentile "
          f"{np.percentile(finite, 95):.1f} mm, max {max(finite):.1f} mm; not found {len(errors) - len(finite)}; "
          f"LV slices dropped {dropped}, extra slices {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
