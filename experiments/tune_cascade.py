"""Choose model v2's case-level "no infarct" volume on validation cases (never test cases).

    python experiments/tune_cascade.py runs/eval_val/per_case.csv

Reads a scarnet-evaluate per_case.csv made with min_scar_ml=0 and, for each candidate minimum
volume, scores scar the way the EMIDEC challenge does (Dice per case, an empty prediction on an
empty reference = 1): predicted scar below the minimum counts as no scar. Prints the table and the
smallest minimum with the best mean score. It also prints the model's confidence per case, from
which the low-confidence threshold is set below every validation case.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.io.files import read_csv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_case", type=Path)
    parser.add_argument("--candidates", default="0,0.25,0.5,0.75,1,1.5,2,3,4,5")
    args = parser.parse_args(argv)
    rows = read_csv(args.per_case)
    best = None
    for t in (float(x) for x in args.candidates.split(",")):
        scores = []
        for r in rows:
            pred_ml, ref_ml = float(r["pred_scar_ml"]), float(r["ref_scar_ml"])
            if pred_ml < t:   # dropped: empty prediction
                scores.append(1.0 if ref_ml == 0 else 0.0)
            elif ref_ml == 0:
                scores.append(0.0)
            else:
                scores.append(float(r["scar_dice"]))
        mean = float(np.mean(scores))
        print(f"min_scar_ml {t:>5g}: mean scar score {mean:.3f}")
        if best is None or mean > best[1] + 1e-9:
            best = (t, mean)
    print(f"best: min_scar_ml={best[0]:g} (score {best[1]:.3f})")
    conf = [(r["case"], float(r["confidence"])) for r in rows if r.get("confidence") not in (None, "", "nan")]
    conf = [(c, v) for c, v in conf if math.isfinite(v)]
    if conf:
        print("confidence per case: " + ", ".join(f"{c} {v:.3f}" for c, v in sorted(conf, key=lambda x: x[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
