"""The `scarnet` command: segment, quantify, demo, info.

Errors the user can fix are one line (`--verbose` adds the traceback). `segment` reports a bad
input and goes on with the next; the exit status is 1 if any input failed.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .errors import ScarNetError

OUTPUT_SUFFIXES = ("_seg.nii.gz", "_scar.csv", "_scar_slices.csv", "_scar_segments.csv", "_bullseye.png")


class _ProgressBar:
    def __init__(self, name: str):
        from tqdm import tqdm
        self.bar = tqdm(total=0, desc=name, unit="slice", leave=False, file=sys.stderr)

    def __call__(self, done: int, total: int):
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self):
        self.bar.close()


def segment_one(segmenter, path: str, out_dir: Path, batch_size: int, overwrite: bool,
                insertion_point=None, overlay: bool = False, pixel_spacing: float | None = None,
                force: bool = False) -> dict:
    """Segment one input and write its label volume, tables and bullseye; returns the written paths."""
    from .io import check_not_label_map, input_stem, read_image, write_image_atomic
    from .quantify import quantify, write_reports

    name = input_stem(path)
    existing = [out_dir / f"{name}{s}" for s in OUTPUT_SUFFIXES if (out_dir / f"{name}{s}").exists()]
    if existing and not overwrite:
        raise ScarNetError(f"{existing[0]} already exists; choose another -o folder or pass --overwrite "
                           "(earlier results are never replaced silently)")
    image = read_image(path)
    if not force:  # --force: the user says this few-valued image is an image
        check_not_label_map(image)
    notes = []
    if pixel_spacing is not None or str(path).lower().endswith(".png"):
        # PNG stores no pixel size (ITK reports a placeholder 1 mm); volumes and the model's
        # resampling need one, so take the user's or the nominal size the model was trained with
        mm = pixel_spacing or segmenter.preprocessing.png_nominal_spacing_mm
        image.SetSpacing((mm,) * image.GetDimension())
        if pixel_spacing is None:
            notes.append(f"PNG has no pixel spacing: assumed {mm} mm/pixel (set it with --pixel-spacing)")
    bar = _ProgressBar(name)
    try:
        result = segmenter.segment(image, progress=bar, batch_size=batch_size)
    finally:
        bar.close()
    # labels first, tables after: each file is complete or absent
    written = {"labels": write_image_atomic(result.labels, out_dir / f"{name}_seg.nii.gz")}
    report = quantify(result.labels, image=image, insertion_point=insertion_point)
    report.global_metrics["qc_flags"] = ";".join(result.qc_flags)  # empty when all is well
    written.update(write_reports(report, out_dir, name))
    if overlay:
        from .overlay import write_overlay
        g = report.global_metrics
        title = f"{name}: scar {g['scar_ml']:.1f} mL" + (
            f" ({g['scar_percent_lv']:.1f} % of LV myocardium)" if g.get("scar_percent_lv") is not None else "")
        written["overlay"] = write_overlay(image, result.labels, out_dir / f"{name}_overlay.png", title)
    written["metrics"] = report.global_metrics
    written["warnings"] = notes + report.warnings
    written["qc_flags"] = list(result.qc_flags)
    return written


def cmd_segment(args) -> int:
    from .inference import Segmenter

    segmenter = Segmenter(args.model, device=args.device, precision=args.precision)
    print(f"model: {segmenter.model_info.get('name')} on {segmenter.device}", file=sys.stderr)
    out_dir = Path(args.output)
    failures = 0
    for path in args.inputs:
        try:
            written = segment_one(segmenter, path, out_dir, args.batch_size, args.overwrite,
                                  tuple(args.insertion_point) if args.insertion_point else None, args.overlay,
                                  args.pixel_spacing, force=args.force)
        except ScarNetError as exc:
            failures += 1
            print(f"scarnet: {path}: {exc}", file=sys.stderr)
            if args.verbose:
                traceback.print_exc()
            continue
        _print_summary(path, written)
    if failures:
        print(f"scarnet: {failures} of {len(args.inputs)} input(s) failed", file=sys.stderr)
    return 1 if failures else 0


def _print_summary(path, written: dict):
    g = written["metrics"]
    pct = g.get("scar_percent_lv")
    print(f"{path}: myocardium {g['myocardium_ml']:.1f} mL, scar {g['scar_ml']:.1f} mL"
          + (f" ({pct:.1f} % of LV)" if pct is not None else "") + f", MVO {g['mvo_ml']:.1f} mL")
    from .inference import QC_MESSAGES
    for flag in written.get("qc_flags", []):
        print(f"warning: {path}: {flag}: {QC_MESSAGES.get(flag, flag)}", file=sys.stderr)
    for warning in written.get("warnings", []):
        print(f"  note: {warning}")
    for key, value in written.items():
        if key not in ("metrics", "warnings", "qc_flags"):
            print(f"  wrote {value}")


def cmd_demo(args) -> int:
    from .inference import Segmenter
    from .resources import default_model_path, sample_volume_path

    if not default_model_path().is_file():
        raise ScarNetError(f"no trained model is bundled ({default_model_path()} is missing); "
                           "the demo needs the default ScarNet model")
    out_dir = Path(args.output) if args.output else _fresh_folder(Path("scarnet_demo"))
    segmenter = Segmenter(None, device=args.device)
    info = segmenter.model_info
    print(f"ScarNet demo: model {info.get('name')} ({info.get('licence', 'licence not recorded')}) on {segmenter.device}")
    print(f"sample: {sample_volume_path()} (EMIDEC, CC BY-NC-SA 4.0)")
    written = segment_one(segmenter, str(sample_volume_path()), out_dir, 8, overwrite=False, overlay=True)
    _print_summary("sample", written)
    print(f"results in {out_dir.resolve()}")
    return 0


def _fresh_folder(base: Path) -> Path:
    """A results folder that holds no earlier run: base, base-2, base-3, ..."""
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def cmd_info(args) -> int:
    from .checkpoint import load_checkpoint
    from .model import ScarNet, ScarNetConfig
    from .resources import default_model_path

    if args.encoder:
        model, meta = ScarNet(ScarNetConfig(encoder=args.encoder, encoder_checkpoint=args.encoder_checkpoint),
                              pretrained_encoder=args.encoder_checkpoint is not None or args.encoder == "litemedsam"), {}
    else:
        model, meta = load_checkpoint(args.model or default_model_path())
    from .cascade import ScarNetCascade
    if isinstance(model, ScarNetCascade):
        print(f"ScarNet {__version__}: model v2 cascade (stage 1 finds the LV, stage 2 segments the crop around it)")
        for name in ("locate", "segment"):
            g = model.geometry[name]
            print(f"  {name}: {g.grid_size}×{g.grid_size} at {g.spacing_mm:g} mm/pixel "
                  f"({g.grid_size * g.spacing_mm:g} mm field of view)")
            _describe(getattr(model, name), "  ")
    else:
        _describe(model, "")
    for key in ("name", "licence", "training_data", "metrics"):
        if key in meta and key != "training_data":
            print(f"{key}: {meta[key]}")
    return 0


def _describe(model, indent: str) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import count_parameters
    counts = count_parameters(model)
    grid = model.config.grid_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, grid, grid))
    flops = counter.get_total_flops()
    encoder = f"{model.config.encoder} (input {model.encoder.input_size} px)" if model.encoder is not None else "none"
    print(f"{indent}encoder {encoder}, grid {grid}×{grid}")
    print(f"{indent}parameters: {counts['total']:,} total = {counts['encoder']:,} encoder + "
          f"{counts['unet_fusion_decoder']:,} U-Net/fusion/decoder")
    print(f"{indent}FLOPs per slice: {flops / 1e9:.2f} GFLOP ({flops / 2e9:.2f} GMAC)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scarnet", description="ScarNet: LGE myocardial scar segmentation "
                                     "and quantification (labels: 0 background, 1 LV blood pool, "
                                     "2 healthy myocardium, 3 scar, 4 MVO)")
    parser.add_argument("--version", action="version", version=f"scarnet {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment LGE volumes and quantify scar")
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI/NRRD/MHA file or DICOM series folder")
    seg.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    seg.add_argument("--model", metavar="CKPT", help="ScarNet .safetensors checkpoint (default: bundled model)")
    seg.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    seg.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    seg.add_argument("--batch-size", type=int, default=8, help="slices per batch (bounds memory)")
    seg.add_argument("--insertion-point", nargs=3, type=float, metavar=("X", "Y", "Z"),
                     help="anterior RV insertion point for AHA segments, physical LPS mm")
    seg.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    seg.add_argument("--pixel-spacing", type=float, metavar="MM",
                     help="pixel size for inputs without one (PNG; default: the model's nominal size)")
    seg.add_argument("--overwrite", action="store_true", help="replace earlier results in OUTDIR")
    seg.add_argument("--force", action="store_true",
                     help="segment an input even though it looks like a label map (few integer values)")
    seg.set_defaults(func=cmd_segment)

    from .quantify.cli import register
    register(sub)

    demo = sub.add_parser("demo", help="run the bundled model on the bundled EMIDEC sample")
    demo.add_argument("-o", "--output", metavar="OUTDIR", help="default: ./scarnet_demo (or -2, -3… if used)")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=cmd_demo)

    info = sub.add_parser("info", help="parameters and FLOPs per slice of a model")
    info.add_argument("--model", metavar="CKPT", help="checkpoint (default: bundled model)")
    info.add_argument("--encoder", help="describe a fresh network with this encoder instead of a checkpoint")
    info.add_argument("--encoder-checkpoint", metavar="PTH", help="medsam_vit_b.pth for --encoder medsam-vit-b")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK's NIfTI chatter (e.g. "unexpected scales in sform")
    try:
        return args.func(args)
    except ScarNetError as exc:
        print(f"scarnet: error: {exc}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"scarnet: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("scarnet: interrupted; files already complete are kept, nothing half-written", file=sys.stderr)
        return 130
    if args.verbose:
        traceback.print_exc()
    return 2


if __name__ == "__main__":
    sys.exit(main())
