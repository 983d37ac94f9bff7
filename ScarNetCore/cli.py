"""The `scarnet` command: segment, quantify, demo, info.

Errors the user can fix are one line (`--verbose` adds the traceback). `segment` reports a bad
input, records it in the cohort table and goes on with the next; the exit status is 1 if any
input failed. Every file is named and written by io/outputs.py.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .errors import ScarNetError

SEGMENT_OUTPUTS = ("labels", "summary", "slices", "segments", "bullseye")  # always written by segment

QUANTIFY_DESCRIPTION = """Quantify scar in a label volume (0 background, 1 LV blood pool, 2 myocardium, 3 scar,
4 MVO), e.g. a segmentation corrected by hand. Writes into OUTDIR the files `scarnet segment` writes
for a study, without the label volume: NAME_scar.csv, NAME_scar_slices.csv, NAME_scar_segments.csv,
NAME_bullseye.png, NAME_run.json (and NAME_<method>.nii.gz with --classical)."""


def _say(text: str, err: bool = False) -> None:
    """Print without breaking the progress bars (tqdm clears them, prints, redraws them)."""
    from tqdm import tqdm
    tqdm.write(text, file=sys.stderr if err else sys.stdout)


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


def _planned(path: str, overlay: bool, dicom_seg: bool) -> tuple[str, ...]:
    """The output kinds segment_one writes for this input with these options."""
    return SEGMENT_OUTPUTS + (("overlay",) if overlay else ()) + (("dicom_seg",) if dicom_seg and Path(path).is_dir() else ())


def segment_one(segmenter, path: str, out_dir: Path, batch_size: int = 8, overwrite: bool = False,
                insertion_point=None, overlay: bool = False, pixel_spacing: float | None = None,
                force: bool = False, dicom_seg: bool = False, series: str | None = None) -> dict:
    """Segment one input and write its study files; returns {kind: path} and its metrics, warnings, qc_flags."""
    from .io import outputs
    from .io.reading import input_files, input_stem, read_image
    from .io.validation import check_not_label_map
    from .quantify import quantify

    name = input_stem(path)
    outputs.refuse_overwrite(out_dir, name, overwrite)
    started = outputs.now()
    notes = []  # facts about the input worth knowing (uneven DICOM slice spacing, an assumed pixel size)
    image = read_image(path, series, notes)
    if not force:  # --force: the user says this few-valued image is an image
        check_not_label_map(image)
    if pixel_spacing is not None or str(path).lower().endswith(".png"):
        # PNG stores no pixel size (ITK reports a placeholder 1 mm); volumes and the model's
        # resampling need one, so take the user's or the nominal size the model was trained with
        mm = pixel_spacing or segmenter.metadata.preprocessing.png_nominal_spacing_mm
        image.SetSpacing((mm,) * image.GetDimension())
        if pixel_spacing is None:
            notes.append(f"PNG has no pixel spacing: assumed {mm} mm/pixel (set it with --pixel-spacing)")
    dicom_files = None
    if dicom_seg:
        if Path(path).is_dir():
            dicom_files = input_files(path, series)
        else:
            notes.append(outputs.NO_DICOM_SEG.format("--dicom-seg needs a DICOM series folder as input"))
    bar = _ProgressBar(name)
    try:
        result = segmenter.segment(image, progress=bar, batch_size=batch_size)
    finally:
        bar.close()
    report = quantify(result.label_stack, insertion_point=insertion_point)
    options = {"batch_size": batch_size, "insertion_point": insertion_point, "overlay": overlay,
               "pixel_spacing": pixel_spacing, "force": force, "dicom_seg": dicom_seg, "series": series}
    record = outputs.run_record(input_files(path, series), options, started, segmenter, result, notes + report.warnings)
    written = outputs.write_study(out_dir, name, report, record, labels=result.label_stack, qc_flags=result.qc_flags,
                                  overlay=overlay, dicom_files=dicom_files, overwrite=overwrite)
    written["metrics"] = report.global_metrics
    written["summary_row"] = outputs.summary_row(report, record["qc_flags"])  # the model's and the output layer's
    written["warnings"] = record["warnings"]
    written["qc_flags"] = record["qc_flags"]
    if record.get("dicom_seg_skipped"):
        written["dicom_seg_skipped"] = record["dicom_seg_skipped"]
    return written


def cmd_segment(args) -> int:
    from tqdm import tqdm

    from .io import outputs
    from .io.reading import input_stem
    from .pipeline.segmenter import Segmenter

    inputs, part = list(args.inputs), None
    if (args.part is None) != (args.parts is None) or (args.parts is not None and not 0 <= args.part < args.parts):
        raise ScarNetError("give --part K and --parts N together, with 0 <= K < N (e.g. --part 0 --parts 4)")
    if args.parts is not None:
        part = (args.part, args.parts)
        inputs = inputs[args.part::args.parts]  # every N-th study, as nnU-Net's -part_id/-num_parts
    segmenter = Segmenter(args.model, device=args.device, precision=args.precision)
    outputs.check_writable(args.output)  # before minutes of work, not after (a bad model leaves no folder)
    print(f"model: {segmenter.model_info.get('name')} on {segmenter.device}", file=sys.stderr)
    out_dir = Path(args.output)
    cohort = outputs.CohortTable(out_dir, part)
    failures = 0
    for path in tqdm(inputs, desc="studies", unit="study", file=sys.stderr):
        planned = _planned(path, args.overlay, args.dicom_seg)
        done = outputs.completed_summary(out_dir, input_stem(path), planned) if args.resume else None
        if done is not None:
            cohort.add(path, "ok", summary=done)
            _say(f"{path}: complete in {out_dir}, skipped (--resume)")
            continue
        try:
            # --resume redoes a study it cannot prove complete, replacing its partial files
            written = segment_one(segmenter, path, out_dir, args.batch_size, args.overwrite or args.resume,
                                  tuple(args.insertion_point) if args.insertion_point else None, args.overlay,
                                  args.pixel_spacing, force=args.force, dicom_seg=args.dicom_seg,
                                  series=args.series)
        except Exception as exc:  # one study's failure is reported and recorded; the cohort goes on
            failures += 1
            reason = str(exc) if isinstance(exc, ScarNetError) else f"{type(exc).__name__}: {exc}"
            cohort.add(path, "failed", reason)
            _say(f"scarnet: {path}: {reason}", err=True)
            if args.verbose:
                traceback.print_exc()
            continue
        cohort.add(path, "ok", summary=written["summary_row"])
        _print_summary(path, written)
    if inputs:
        _say(f"cohort table: {cohort.path}")
    if failures:
        _say(f"scarnet: {failures} of {len(inputs)} input(s) failed", err=True)
    return 1 if failures else 0


def _print_summary(path, written: dict):
    g = written["metrics"]
    pct = g.get("scar_percent_lv")
    _say(f"{path}: myocardium {g['myocardium_ml']:.1f} mL, scar {g['scar_ml']:.1f} mL"
         + (f" ({pct:.1f} % of LV)" if pct is not None else "") + f", MVO {g['mvo_ml']:.1f} mL")
    from .pipeline.segmenter import QC_MESSAGES
    from .io.outputs import DICOM_SEG_SKIPPED, NO_DICOM_SEG
    skipped = NO_DICOM_SEG.format(written["dicom_seg_skipped"]) if "dicom_seg_skipped" in written else None
    messages = {**QC_MESSAGES, DICOM_SEG_SKIPPED: f"{skipped}; the other files are complete"}
    for flag in written.get("qc_flags", []):
        _say(f"warning: {path}: {flag}: {messages.get(flag, flag)}", err=True)
    for warning in written.get("warnings", []):
        if warning != skipped:  # said in the warning line above
            _say(f"  note: {warning}")
    for key, value in written.items():
        if key not in ("metrics", "summary_row", "warnings", "qc_flags", "dicom_seg_skipped"):
            _say(f"  wrote {value}")


def cmd_quantify(args) -> int:
    from .io import outputs
    from .io.reading import input_stem, read_image
    from .quantify import quantify

    name = args.name or input_stem(args.labels)
    out_dir = Path(args.output)
    outputs.refuse_overwrite(out_dir, name, args.overwrite)
    started = outputs.now()
    labels = read_image(args.labels)
    image = read_image(args.image) if args.image else None
    remote = read_image(args.remote) if args.remote else None
    insertion = tuple(args.insertion_point) if args.insertion_point else None
    result = quantify(labels, image=image, density_g_per_ml=args.density, insertion_point=insertion,
                      classical=args.classical, remote_mask=remote)
    options = {"density_g_per_ml": args.density, "insertion_point": insertion, "classical": args.classical}
    files = [f for f in (args.labels, args.image, args.remote) if f]
    record = outputs.run_record(files, options, started, warnings=result.warnings)
    written = outputs.write_study(out_dir, name, result, record, overwrite=args.overwrite)
    print(outputs.bullseye_title(result, name))
    g = result.global_metrics
    if g.get("myocardium_ml") is not None:
        print(f"LV myocardium {g['myocardium_ml']:.1f} mL ({g['myocardium_g']:.1f} g), "
              f"blood pool {g['blood_pool_ml']:.1f} mL")
    for method in result.classical_labels:
        pct = g.get(f"scar_percent_lv_{method}")
        print(f"  {method}: scar {g[f'scar_ml_{method}']:.1f} mL" + (f" ({pct:.1f} %)" if pct is not None else ""))
    for warning in result.warnings:
        print(f"note: {warning}")
    for path in written.values():
        print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from .pipeline.segmenter import Segmenter
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
    from .model import ScarNet, ScarNetConfig
    from .model.checkpoint import load_checkpoint
    from .resources import default_model_path

    if args.encoder:
        model, info = ScarNet(ScarNetConfig(encoder=args.encoder, encoder_checkpoint=args.encoder_checkpoint),
                              pretrained_encoder=args.encoder_checkpoint is not None or args.encoder == "litemedsam"), {}
    else:
        model, meta = load_checkpoint(args.model or default_model_path())
        info = meta.info()
    from .model.cascade import ScarNetCascade
    if isinstance(model, ScarNetCascade):
        refine = "; a refine stage looks again, given stage 2's result" if model.refine is not None else ""
        print(f"ScarNet {__version__}: model v2 cascade (stage 1 finds the LV, stage 2 segments the crop around it{refine})")
        for name in model.stage_names:
            g = model.geometry[name]
            print(f"  {name}: {g.grid_size}×{g.grid_size} at {g.target_spacing_mm:g} mm/pixel "
                  f"({g.grid_size * g.target_spacing_mm:g} mm field of view)")
            net = getattr(model, name)
            members = getattr(net, "members", [net])  # an ensemble stage 2: each member
            if len(members) > 1:
                print(f"  ensemble of {len(members)} networks, probabilities averaged")
            for member in members:
                _describe(member, "    " if len(members) > 1 else "  ")
    else:
        _describe(model, "")
    for key in ("name", "licence", "metrics"):
        if key in info:
            print(f"{key}: {info[key]}")
    return 0


def _describe(model, indent: str) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import count_parameters
    counts = count_parameters(model)
    grid = model.config.grid_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, model.config.input_channels, grid, grid))
    flops = counter.get_total_flops()
    encoder = f"{model.config.encoder} (input {model.encoder.input_size} px)" if model.encoder is not None else "none"
    channels = model.config.in_channels
    context = f", input: {channels} slices, the slice between its neighbours (2.5-D)" if channels > 1 else ""
    if model.config.prior:
        context += ", and stage 2's class probabilities for each"
    print(f"{indent}encoder {encoder}, grid {grid}×{grid}{context}")
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
    seg.add_argument("--dicom-seg", action="store_true",
                     help="for a DICOM series input, also write <name>_seg.dcm (DICOM Segmentation)")
    seg.add_argument("--overwrite", action="store_true", help="replace earlier results in OUTDIR")
    seg.add_argument("--resume", action="store_true",
                     help="skip studies whose files and run record are complete in OUTDIR; redo the others")
    seg.add_argument("--part", type=int, metavar="K", help="with --parts N: segment every N-th input, from "
                     "the K-th (0-based); the rows go to OUTDIR/cohort.part-K-of-N.csv")
    seg.add_argument("--parts", type=int, metavar="N", help="split the inputs into N parts (machines, SLURM array)")
    seg.add_argument("--series", metavar="UID",
                     help="for a DICOM folder holding several series: the SeriesInstanceUID to segment; "
                          "UID:N for stack N of a series holding several (the error message lists them)")
    seg.add_argument("--force", action="store_true",
                     help="segment an input even though it looks like a label map (few integer values)")
    seg.set_defaults(func=cmd_segment)

    quant = sub.add_parser("quantify", help="volumes, AHA segments and bullseye from a label volume",
                           description=QUANTIFY_DESCRIPTION)
    quant.add_argument("labels", metavar="LABELS", help="label volume (NIfTI/NRRD/MHA, values 0..4)")
    quant.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    quant.add_argument("--name", help="file-name stem of the outputs (default: LABELS without its suffix)")
    quant.add_argument("--image", metavar="IMAGE", help="the LGE image on the same grid (needed for --classical)")
    quant.add_argument("--insertion-point", metavar=("X", "Y", "Z"), nargs=3, type=float,
                       help="anterior RV insertion point, physical LPS mm (Slicer RAS: negate X and Y); "
                            "without it the point is estimated from the image orientation and flagged")
    quant.add_argument("--density", type=float, default=1.05, help="myocardial density in g/mL (default 1.05)")
    quant.add_argument("--classical", action="store_true",
                       help="also threshold n-SD (2, 3, 5, 6) and FWHM inside the labelled myocardium")
    quant.add_argument("--remote", metavar="MASK",
                       help="remote (healthy) myocardium mask for n-SD; default: automatic, see the docs")
    quant.add_argument("--overwrite", action="store_true", help="replace earlier results in OUTDIR")
    quant.set_defaults(func=cmd_quantify)

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
