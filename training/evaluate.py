"""Evaluate a ScarNet checkpoint on labelled cases: `scarnet-evaluate --model CKPT --data ROOT --out DIR`.

Every case goes through `ScarNetCore.pipeline.segmenter.Segmenter` (the preprocessing and post-processing
a user gets), and is scored in 3-D against its reference labels on the clinical structures
myocardium (2∪3∪4), scar (3∪4) and MVO (4).

Layouts (`--layout auto` picks slices when images/ holds PNGs), read by training/data.py as training reads them:
- slices:  images/<case>_slice<NNN>.png + masks/<same name> (the EMIDEC 2D export). The slices of a
           case (grouped by <case>, ordered by NNN) are stacked into one volume. PNG stores no
           spacing, so in-plane spacing is the checkpoint's `png_nominal_spacing_mm` (as in
           training) and the slice distance `--slice-thickness-mm` (default 10 mm, EMIDEC's typical
           value). Volumes (mL), scar % and HD95 of PNG cases are therefore nominal: scar % is
           exact (a ratio of voxel counts), mL scale with the true voxel size.
- volumes: images/<case>.nii.gz + masks/<case>.nii.gz (the training layout), or one folder with
           <case>_image.<ext> + <case>_label.<ext> (also _mask/_seg/_gt), NIfTI/NRRD/MHA, real spacing.

Metrics per case and structure:
- Dice: 2|P∩R|/(|P|+|R|); NaN when both are empty.
- HD95 (mm): MONAI `compute_hausdorff_distance(percentile=95)` on the 3-D masks with the voxel
  spacing: the larger of the two directed 95th-percentile distances between the boundary voxels of
  prediction and reference. NaN when both are empty; +inf when exactly one is (a structure missed
  entirely or predicted where the reference has none). 3-D for both layouts, so PNG stacks and
  NIfTI volumes are scored alike (with the nominal 1.25 × 1.25 × 10 mm voxels for PNGs).
- volumes in mL and scar % of LV myocardium = 100·|scar|/|myocardium| (NaN without myocardium).
- the EMIDEC challenge's own definitions, side by side (`emidec_*`): Dice per case in 3-D on
  myocardium (2∪3∪4), infarct (label 3 only) and MVO (label 4 only), where an empty prediction on an
  empty reference scores 1, averaged over all cases.

Summary (summary.json / summary.csv): mean ± SD (sample SD, ddof 1) over cases. Dice of a structure
is averaged over the cases whose reference has it (all cases for myocardium; scar/MVO: infarct
cases); cases with an empty reference are listed separately: `both_empty_cases` (correct negatives)
and `false_positive_cases` (reference empty, prediction not; Dice 0). HD95 is averaged over cases
where both masks are non-empty; `infinite_hd95_cases` lists the rest. Scar % agreement: Pearson r,
bias, ±1.96 SD limits of agreement, with correlation and Bland–Altman plots.

Noise robustness (`--noise gaussian,rician --snr 20,10,5 --repeats N`): see training/robustness.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.errors import ScarNetError
from ScarNetCore.io.files import atomic_path, write_csv, write_json_atomic
from ScarNetCore.labels import MVO, SCAR, myocardium_mask, scar_mask
from ScarNetCore.pipeline.stack import Stack
from training.data import DEFAULT_THICKNESS_MM, LAYOUTS, Case, case_ids, detect_layout, read_cases, select_cases
from training.metrics import STRUCTURES, dice

# the EMIDEC challenge's structures: infarct and MVO each one label, not nested
EMIDEC_STRUCTURES = {"myocardium": myocardium_mask, "infarct": lambda labels: labels == SCAR,
                     "mvo": lambda labels: labels == MVO}


def emidec_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """The challenge's Dice: an empty prediction on an empty reference is a perfect 1."""
    value = dice(pred, ref)
    return 1.0 if math.isnan(value) else value


# --- metrics -------------------------------------------------------------------------------------

def hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI); NaN both empty, inf one empty."""
    p, r = pred.astype(bool), ref.astype(bool)
    if not p.any() and not r.any():
        return math.nan
    if not p.any() or not r.any():
        return math.inf
    import torch
    from monai.metrics import compute_hausdorff_distance
    # crop to the joint bounding box plus a margin: same distances, far less work on big volumes
    box = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in np.nonzero(p | r))
    t = lambda m: torch.from_numpy(np.ascontiguousarray(m[box]))[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own internal deprecation notice
        value = compute_hausdorff_distance(t(p), t(r), include_background=True, percentile=95,
                                           spacing=[float(s) for s in spacing])
    return float(value[0, 0])


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing, surface: bool = True) -> dict:
    """Dice, HD95 (mm), volumes (mL) and scar % of LV myocardium for one case (numpy z, y, x)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = {}
    for name, mask in STRUCTURES.items():
        p, r = mask(pred), mask(ref)
        out[f"{name}_dice"] = dice(p, r)
        if surface:
            out[f"{name}_hd95_mm"] = hd95(p, r, spacing)
        out[f"ref_{name}_ml"] = float(r.sum()) * voxel_ml
        out[f"pred_{name}_ml"] = float(p.sum()) * voxel_ml
    for name, mask in EMIDEC_STRUCTURES.items():
        out[f"emidec_{name}_dice"] = emidec_dice(mask(pred), mask(ref))
    for who, labels in (("ref", ref), ("pred", pred)):
        myo = int(myocardium_mask(labels).sum())
        out[f"{who}_scar_percent"] = 100.0 * int(scar_mask(labels).sum()) / myo if myo else math.nan
    return out


def _mean_sd(values) -> tuple[float, float, int]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan, len(values)


def mean_ci95(values, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % confidence interval of the mean over cases: a BCa bootstrap over the cases (scipy), seeded so
    that a summary is reproducible. NaN with fewer than 3 cases; the mean itself if every case agrees."""
    from scipy.stats import bootstrap
    values = np.array([v for v in values if math.isfinite(v)], float)
    if len(values) < 3:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    ci = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=resamples, method="BCa",
                   random_state=seed).confidence_interval
    return float(ci.low), float(ci.high)


def _dice_summary(values) -> dict:
    """Mean ± SD of per-case Dice values, their count and the 95 % CI of the mean."""
    mean, sd, n = _mean_sd(values)
    return {"dice_mean": mean, "dice_sd": sd, "dice_cases": n, "dice_ci95": list(mean_ci95(values))}


def summarize(rows: list[dict]) -> dict:
    """Per structure mean ± SD over cases with a 95 % CI of the mean, empty-reference cases reported separately."""
    from training.plots import agreement
    summary = {"cases": len(rows), "structures": {}}
    for name in STRUCTURES:
        entry = {**_dice_summary([r[f"{name}_dice"] for r in rows if r[f"ref_{name}_ml"] > 0]),
                 "both_empty_cases": [r["case"] for r in rows if r[f"ref_{name}_ml"] == 0 and r[f"pred_{name}_ml"] == 0],
                 "false_positive_cases": [r["case"] for r in rows if r[f"ref_{name}_ml"] == 0 and r[f"pred_{name}_ml"] > 0]}
        if rows and f"{name}_hd95_mm" in rows[0]:
            mean, sd, n = _mean_sd([r[f"{name}_hd95_mm"] for r in rows])
            entry.update({"hd95_mm_mean": mean, "hd95_mm_sd": sd, "hd95_cases": n,
                          "infinite_hd95_cases": [r["case"] for r in rows if r[f"{name}_hd95_mm"] == math.inf]})
        summary["structures"][name] = entry
    if rows and "emidec_myocardium_dice" in rows[0]:
        summary["emidec"] = {name: _dice_summary([r[f"emidec_{name}_dice"] for r in rows])
                             for name in EMIDEC_STRUCTURES}
    for quantity in ("scar_percent", "scar_ml"):
        summary[f"{quantity}_agreement"] = agreement([r[f"pred_{quantity}"] for r in rows],
                                                     [r[f"ref_{quantity}"] for r in rows])
    return summary


# --- output --------------------------------------------------------------------------------------

def write_table(path: Path, rows: list[dict]) -> None:
    """The one CSV writer (ScarNetCore.io.files.write_csv), with NaN written as `nan` rather than left
    blank: Python's float(), numpy and pandas read these tables back, as they always have (inf is `inf`)."""
    write_csv([{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows],
              path)


def summary_rows(summary: dict) -> list[dict]:
    rows = []
    for name, e in summary["structures"].items():
        rows.append({"quantity": f"{name}_dice", "mean": e["dice_mean"], "sd": e["dice_sd"], "n": e["dice_cases"],
                     "ci95_low": e["dice_ci95"][0], "ci95_high": e["dice_ci95"][1],
                     "note": f"both empty: {len(e['both_empty_cases'])}; "
                             f"false positive on empty reference: {len(e['false_positive_cases'])}"})
        if "hd95_mm_mean" in e:
            rows.append({"quantity": f"{name}_hd95_mm", "mean": e["hd95_mm_mean"], "sd": e["hd95_mm_sd"],
                         "n": e["hd95_cases"], "note": f"infinite (one mask empty): {len(e['infinite_hd95_cases'])}"})
    for name, e in summary.get("emidec", {}).items():
        rows.append({"quantity": f"emidec_{name}_dice", "mean": e["dice_mean"], "sd": e["dice_sd"],
                     "n": e["dice_cases"], "ci95_low": e["dice_ci95"][0], "ci95_high": e["dice_ci95"][1],
                     "note": "EMIDEC challenge definition: all cases, empty on empty = 1"})
    for quantity in ("scar_percent", "scar_ml"):
        a = summary[f"{quantity}_agreement"]
        rows.append({"quantity": f"{quantity}_bias", "mean": a["bias"], "sd": a["sd_difference"], "n": a["n"],
                     "note": f"predicted − reference; LoA [{a['loa_low']:.3g}, {a['loa_high']:.3g}]; "
                             f"Pearson r {a['pearson_r']:.3g}"})
    return rows


# --- driver --------------------------------------------------------------------------------------

def _parse_list(text: str | None, convert=str) -> list:
    return [convert(t.strip()) for t in text.split(",") if t.strip()] if text else []


def evaluate(args: argparse.Namespace, log=print) -> dict:
    from ScarNetCore.pipeline.segmenter import Segmenter
    from training import plots, robustness

    root, out = Path(args.data), Path(args.out)
    layout = detect_layout(root) if args.layout == "auto" else args.layout
    noise_kinds = _parse_list(args.noise)
    snrs = _parse_list(args.snr, float)
    for kind in noise_kinds:
        if kind not in robustness.NOISE_TYPES:
            raise ValueError(f"--noise {kind!r}: choose from {', '.join(robustness.NOISE_TYPES)}")
    if noise_kinds and (not snrs or min(snrs) <= 0 or args.repeats < 1):
        raise ValueError("--noise needs --snr with positive values and --repeats ≥ 1")
    label_map = {int(k): int(v) for k, v in json.loads(args.label_map).items()} if args.label_map else None

    segmenter = Segmenter(args.model, args.device, args.precision)
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: choose auto, slices or volumes")
    in_plane = None
    if layout == "slices":
        in_plane = segmenter.metadata.preprocessing.png_nominal_spacing_mm
        if args.slice_thickness_mm <= in_plane:
            # the Segmenter cuts along the axis of largest spacing; it must be the stacking axis
            raise ValueError(f"--slice-thickness-mm must exceed the in-plane {in_plane} mm")
    ids = select_cases(case_ids(root, layout), args.split, args.subset, args.cases)
    cases = read_cases(root, layout, ids, label_map, in_plane, args.slice_thickness_mm)
    log(f"evaluating {args.model} on {len(ids)} case(s) from {root} ({layout})")

    rows, runs, clean = [], [], {}
    for index, case in enumerate(cases):
        t0 = time.time()
        result = segmenter.segment(case.image, batch_size=args.batch_size, return_probabilities=args.save_probabilities)
        pred = result.label_stack.stack.join(result.label_stack.labels)   # numpy (z, y, x), as case.labels
        row = {"case": case.id, "slices": int(case.labels.shape[0]),
               "spacing_mm": "×".join(f"{s:g}" for s in case.spacing),
               **case_metrics(pred, case.labels, case.spacing), "qc_flags": ";".join(result.qc_flags),
               "confidence": result.confidence if result.confidence is not None else math.nan,
               "seconds": round(time.time() - t0, 2)}
        rows.append(row)
        log(f"[{index + 1}/{len(ids)}] {case.id}: Dice myo {row['myocardium_dice']:.3f} scar {row['scar_dice']:.3f} "
            f"mvo {row['mvo_dice']:.3f}; scar % ref {row['ref_scar_percent']:.1f} pred {row['pred_scar_percent']:.1f}")
        if args.save_predictions:
            with atomic_path(out / "predictions" / f"{case.id}.nii.gz") as tmp:
                sitk.WriteImage(result.labels, str(tmp), useCompression=True)
        if args.save_probabilities:
            save_probabilities(result.probabilities, result.label_stack.stack, out / "probabilities" / f"{case.id}.npy")
        if noise_kinds:
            clean[case.id] = _defined_dice(row)
            runs += _noise_runs(segmenter, case, index, noise_kinds, snrs, args)
        write_table(out / "per_case.csv", rows)  # rewritten per case: a long run shows progress

    summary = summarize(rows)
    summary.update({"model": str(args.model), "model_info": segmenter.model_info, "data": str(root),
                    "layout": layout, "case_ids": [r["case"] for r in rows]})
    if layout == "slices":
        summary["nominal_spacing_mm"] = {"in_plane": segmenter.metadata.preprocessing.png_nominal_spacing_mm,
                                         "slice_thickness": args.slice_thickness_mm}
    plots.correlation_plot([r["pred_scar_percent"] for r in rows], [r["ref_scar_percent"] for r in rows],
                           out / "scar_percent_correlation.png")
    plots.bland_altman_plot([r["pred_scar_percent"] for r in rows], [r["ref_scar_percent"] for r in rows],
                            out / "scar_percent_bland_altman.png")
    if noise_kinds:
        table = robustness.summarize_runs(runs, tuple(STRUCTURES), clean)
        write_table(out / "robustness_runs.csv", runs)
        write_table(out / "robustness.csv", table)
        plots.robustness_plot(table, out / "robustness.png")
        summary["robustness"] = {"snr_definition": "mean raw intensity in the reference LV (labels 1-4) / noise SD",
                                 "repeats": args.repeats, "seed": args.seed, "rows": table}
    write_json_atomic(summary, out / "summary.json")
    write_table(out / "summary.csv", summary_rows(summary))
    for name, e in summary["structures"].items():
        low, high = e["dice_ci95"]
        log(f"{name}: Dice {e['dice_mean']:.3f} ± {e['dice_sd']:.3f} (n={e['dice_cases']}"
            + (f"; 95 % CI of the mean {low:.3f}–{high:.3f}" if math.isfinite(low) else "") + ")"
            + (f", HD95 {e['hd95_mm_mean']:.2f} ± {e['hd95_mm_sd']:.2f} mm (n={e['hd95_cases']})" if "hd95_mm_mean" in e else ""))
    log(f"results in {out}")
    return summary


def save_probabilities(probabilities: sitk.Image, stack: Stack, path: Path) -> None:
    """The class probabilities as float16 [N, K, h, w], in the layout of the stack the Segmenter cut
    (as the training reader cuts it; a refine stage's training input: data.prior_dir)."""
    slices = stack.layout(sitk.GetArrayFromImage(probabilities))   # [z, y, x, K] → [N, h, w, K]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(np.moveaxis(slices, -1, 1), dtype=np.float16), allow_pickle=False)


def _defined_dice(metrics: dict) -> dict:
    """Dice per structure, NaN where the reference lacks the structure (not scored, as in the summary)."""
    return {f"{n}_dice": metrics[f"{n}_dice"] if metrics[f"ref_{n}_ml"] > 0 else math.nan for n in STRUCTURES}


def _noise_runs(segmenter, case: Case, index: int, kinds, snrs, args) -> list[dict]:
    from training import robustness
    base = sitk.GetArrayFromImage(case.image).astype(np.float32)
    signal = robustness.signal_level(base, case.labels)
    runs = []
    for kind in kinds:
        for snr_index, snr in enumerate(snrs):
            sigma = signal / snr
            for repeat in range(args.repeats):
                noisy = sitk.GetImageFromArray(robustness.add_noise(base, kind, sigma, robustness.noise_rng(
                    args.seed, index, kind, snr_index, repeat)))
                noisy.CopyInformation(case.image)
                pred = sitk.GetArrayFromImage(segmenter.segment(noisy, batch_size=args.batch_size).labels)
                metrics = case_metrics(pred, case.labels, case.spacing, surface=False)
                runs.append({"case": case.id, "noise": kind, "snr": snr, "repeat": repeat, "signal": signal,
                             "sigma": sigma, **_defined_dice(metrics)})
            done = [r for r in runs if r["noise"] == kind and r["snr"] == snr]
            print(f"    {kind} SNR {snr:g}: Dice myo {np.nanmean([r['myocardium_dice'] for r in done]):.3f} "
                  f"over {len(done)} repeat(s)")
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scarnet-evaluate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Outputs in --out: per_case.csv, summary.json, summary.csv, "
                                       "scar_percent_correlation.png, scar_percent_bland_altman.png "
                                       "[, robustness.csv, robustness_runs.csv, robustness.png, predictions/].")
    p.add_argument("--model", required=True, help="ScarNet checkpoint (.safetensors)")
    p.add_argument("--data", required=True, help="data root (slice folders or volume folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layout", default="auto", choices=("auto", "slices", "volumes"))
    p.add_argument("--split", type=Path, help="case split JSON (e.g. training/configs/emidec_split.json)")
    p.add_argument("--subset", default="test", help="subset of --split to evaluate (default: test)")
    p.add_argument("--cases", nargs="+", help="evaluate only these case ids")
    p.add_argument("--label-map", help='JSON mapping of dataset labels, e.g. \'{"5": 3}\'')
    p.add_argument("--slice-thickness-mm", type=float, default=DEFAULT_THICKNESS_MM,
                   help="nominal slice distance for PNG stacks (default 10)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument("--save-predictions", action="store_true", help="write predicted labels to OUT/predictions/")
    p.add_argument("--save-probabilities", action="store_true",
                   help="write class probabilities to OUT/probabilities/<case>.npy (float16 [slices, classes, rows, "
                        "columns]): a refine stage's training input (data.prior_dir)")
    p.add_argument("--noise", help="noise robustness: comma-separated types (gaussian,rician)")
    p.add_argument("--snr", help="comma-separated SNRs, e.g. 20,10,5 (mean LV intensity / noise SD)")
    p.add_argument("--repeats", type=int, default=5, help="Monte Carlo repeats per case, type and SNR (default 5)")
    p.add_argument("--seed", type=int, default=2026, help="noise seed")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        evaluate(args)
    except (ScarNetError, ValueError, FileNotFoundError) as exc:
        print(f"scarnet-evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
