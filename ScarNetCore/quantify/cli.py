"""`scarnet quantify LABELS [--image IMAGE] --table OUT.csv`: report an existing segmentation."""
from __future__ import annotations

import argparse

from pathlib import Path

from ..errors import ScarNetError
from ..io import input_stem, read_image
from .compute import quantify
from .report import bullseye_title, paths_beside_table, write_report_files

DESCRIPTION = """Quantify scar in a label volume (0 background, 1 LV blood pool, 2 myocardium, 3 scar,
4 MVO), e.g. a segmentation corrected by hand. Writes OUT.csv (global, one row) and beside it
OUT_slices.csv, OUT_segments.csv (AHA 17 segments) and OUT_bullseye.png."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("quantify", help="volumes, AHA segments and bullseye from a label volume",
                                   description=DESCRIPTION)
    parser.add_argument("labels", metavar="LABELS", help="label volume (NIfTI/NRRD/MHA, values 0..4)")
    parser.add_argument("--image", metavar="IMAGE", help="the LGE image on the same grid (needed for --classical)")
    parser.add_argument("--table", metavar="OUT.csv", required=True, help="global CSV to write; the others go beside it")
    parser.add_argument("--insertion-point", metavar=("X", "Y", "Z"), nargs=3, type=float,
                        help="anterior RV insertion point, physical LPS mm (Slicer RAS: negate X and Y); "
                             "without it the point is estimated from the image orientation and flagged")
    parser.add_argument("--density", type=float, default=1.05, help="myocardial density in g/mL (default 1.05)")
    parser.add_argument("--classical", action="store_true",
                        help="also threshold n-SD (2, 3, 5, 6) and FWHM inside the labelled myocardium")
    parser.add_argument("--remote", metavar="MASK",
                        help="remote (healthy) myocardium mask for n-SD; default: automatic, see the docs")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    labels = read_image(args.labels)
    image = read_image(args.image) if args.image else None
    remote = read_image(args.remote) if getattr(args, "remote", None) else None
    result = quantify(labels, image=image, density_g_per_ml=args.density,
                      insertion_point=tuple(args.insertion_point) if args.insertion_point else None,
                      classical=args.classical, remote_mask=remote)
    paths = paths_beside_table(args.table, result)
    existing = [p for p in paths.values() if Path(p).exists()]
    if existing and not getattr(args, "overwrite", False):
        raise ScarNetError(f"{existing[0]} already exists; choose another --table name or pass --overwrite "
                           "(earlier results are never replaced silently)")
    write_report_files(result, paths, title=input_stem(args.labels))
    print(bullseye_title(result, input_stem(args.labels)))
    g = result.global_metrics
    if g.get("myocardium_ml") is not None:
        print(f"LV myocardium {g['myocardium_ml']:.1f} mL ({g['myocardium_g']:.1f} g), "
              f"blood pool {g['blood_pool_ml']:.1f} mL")
    for name in result.classical_labels:
        pct = g.get(f"scar_percent_lv_{name}")
        print(f"  {name}: scar {g[f'scar_ml_{name}']:.1f} mL" + (f" ({pct:.1f} %)" if pct is not None else ""))
    for warning in result.warnings:
        print(f"note: {warning}")
    for path in paths.values():
        print(f"wrote {path}")
    return 0

