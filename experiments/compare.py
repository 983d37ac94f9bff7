"""Compare evaluations of two models on the same cases: scar % Bland–Altman side by side.

    python experiments/compare.py eval_v1/per_case.csv eval_v2/per_case.csv --names v1 v2 --out ba.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.io.files import read_csv
from training.plots import bland_altman_comparison


def read_scar_percent(path: Path) -> dict[str, tuple[float, float]]:
    return {r["case"]: (float(r["pred_scar_percent"]), float(r["ref_scar_percent"])) for r in read_csv(path)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_case", nargs="+", type=Path, help="per_case.csv of each model (scarnet-evaluate)")
    parser.add_argument("--names", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if len(args.names) != len(args.per_case):
        parser.error("give one name per per_case.csv")
    tables = [read_scar_percent(p) for p in args.per_case]
    cases = sorted(set.intersection(*(set(t) for t in tables)))
    if len(cases) < max(len(t) for t in tables):
        print(f"note: comparing the {len(cases)} cases every evaluation holds", file=sys.stderr)
    models = {n: ([t[c][0] for c in cases], [t[c][1] for c in cases]) for n, t in zip(args.names, tables)}
    for name, s in bland_altman_comparison(models, args.out).items():
        print(f"{name}: scar % bias {s['bias']:+.2f}, limits of agreement [{s['loa_low']:+.2f}, {s['loa_high']:+.2f}], "
              f"Pearson r {s['pearson_r']:.3f} (n = {s['n']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
