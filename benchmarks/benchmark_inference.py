"""Inference speed and memory of ScarNet models (v1 and v2 side by side), fp32 vs auto precision,
and how far reduced precision changes the labels.

    python benchmarks/benchmark_inference.py [--models v1,v2 | --models CKPT,...] [--large] [--device cpu]

Default study: the bundled EMIDEC sample (real LGE, 248×258 at 1.41 mm) with its 7 slices cycled to
10, so that every slice holds LV and v2's stage 2 runs on all of them (its worst case); --large: a
40-slice 512×512 phantom. Each model and precision runs in a fresh process so that its peak RSS
(ru_maxrss) is its own; tracemalloc adds the peak of host numpy buffers during segment(). The whole
study runs once before timing (one-time kernel selection for each batch shape is not throughput; a
one-slice warm-up left it in the timed run), then `--repeats` timed runs: the median is printed, and
their spread (slowest minus fastest). `v1` and `v2` name the bundled files (Resources/Models); a path
names any checkpoint.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def phantom_study(slices: int, size: int, seed: int = 0) -> sitk.Image:
    """LGE-like stack: bright blood pool, dark myocardial ring with an enhanced scar sector, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] - size / 2) * (256 / size)
    r, theta = np.hypot(yy, xx), np.arctan2(yy, xx)
    volume = np.empty((slices, size, size), np.float32)
    for z in range(slices):
        scale = 1.0 - 0.4 * z / max(1, slices - 1)  # the ventricle narrows towards the apex
        s = 100.0 + 20 * rng.standard_normal((size, size))
        s[r < 22 * scale] = 400
        ring = (r >= 22 * scale) & (r < 32 * scale)
        s[ring] = 80
        s[ring & (np.abs(theta - 0.8) < 0.6)] = 450
        volume[z] = s + 15 * rng.standard_normal((size, size))
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.25 * 256 / size, 1.25 * 256 / size, 8.0))
    return image


def sample_study(slices: int) -> sitk.Image:
    """The bundled real LGE sample, its slices cycled to `slices`."""
    from ScarNetCore.resources import sample_volume_path
    volume = sitk.ReadImage(str(sample_volume_path()))
    array = sitk.GetArrayFromImage(volume).astype(np.float32)
    image = sitk.GetImageFromArray(array[np.arange(slices) % len(array)])
    image.SetSpacing(volume.GetSpacing())
    return image


def worker(args) -> None:
    import torch

    from ScarNetCore.pipeline.segmenter import Segmenter

    image = sitk.ReadImage(args.study)
    segmenter = Segmenter(args.model, device=args.device, precision=args.precision)
    segmenter.segment(image, batch_size=args.batch_size)  # warm-up: every shape the study needs
    tracemalloc.start()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = segmenter.segment(image, batch_size=args.batch_size)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.save(args.labels_out, sitk.GetArrayFromImage(result.labels))
    print(json.dumps({
        "precision": args.precision, "autocast": segmenter.precision, "seconds": seconds,
        "spread": max(times) - min(times),
        "slices_per_s": image.GetSize()[2] / seconds, "threads": torch.get_num_threads(),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "numpy_peak_mb": traced_peak / 1e6,
    }))


def resolve_model(name: str) -> str:
    from ScarNetCore.resources import default_model_path, v1_model_path
    return str({"v1": v1_model_path(), "v2": default_model_path()}.get(name, name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="v1,v2", help="comma-separated: v1, v2 (bundled) or checkpoint paths")
    parser.add_argument("--large", action="store_true", help="40 slices of 512×512 instead of 10 of 256×256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model and precision (median printed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.worker:
        worker(args)
        return 0

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    with tempfile.TemporaryDirectory(prefix="scarnet-bench-") as tmp:
        workdir = Path(tmp)
        study = workdir / "study.nii.gz"
        image = phantom_study(40, 512) if args.large else sample_study(10)
        sitk.WriteImage(image, str(study))
        size = image.GetSize()
        print(f"study: {size[2]} slices × {size[0]}×{size[1]} ({'phantom' if args.large else 'EMIDEC sample'}), "
              f"device {args.device}, batch size {args.batch_size}")
        rows = []
        for model in args.models.split(","):
            labels = {}
            for precision in args.precisions.split(","):
                out = workdir / f"labels_{len(rows)}.npy"
                proc = subprocess.run([sys.executable, __file__, "--worker", "--precision", precision,
                                       "--study", str(study), "--labels-out", str(out), "--model", resolve_model(model),
                                       "--device", args.device, "--batch-size", str(args.batch_size),
                                       "--repeats", str(args.repeats)],
                                      capture_output=True, text=True)
                if proc.returncode:
                    print(f"{model} {precision}: failed\n{proc.stderr.strip().splitlines()[-1]}")
                    continue
                row = {"model": model, **json.loads(proc.stdout.strip().splitlines()[-1])}
                labels[precision] = np.load(out)
                if precision != "fp32" and "fp32" in labels:
                    row["agree"] = 100.0 * float((labels[precision] == labels["fp32"]).mean())
                rows.append(row)
        width = max([8] + [len(r["model"]) + 2 for r in rows])  # a model given as a path still lines up
        print(f"{'model':<{width}}{'precision':<10}{'autocast':<10}{'seconds':>9}{'spread':>8}{'slices/s':>10}{'peak RSS MB':>13}"
              f"{'numpy peak MB':>15}{'voxels = fp32':>15}")
        for r in rows:
            agree = f"{r['agree']:.3f} %" if "agree" in r else "-"
            print(f"{r['model']:<{width}}{r['precision']:<10}{r['autocast']:<10}{r['seconds']:>9.2f}{r['spread']:>8.2f}{r['slices_per_s']:>10.2f}"
                  f"{r['ru_maxrss_mb']:>13.0f}{r['numpy_peak_mb']:>15.1f}{agree:>15}")
        if rows:
            print(f"torch threads: {rows[0]['threads']}")
        by = {(r["model"], r["precision"]): r["seconds"] for r in rows}
        models = args.models.split(",")
        if len(models) == 2:
            for precision in args.precisions.split(","):
                if (models[0], precision) in by and (models[1], precision) in by:
                    print(f"{precision}: {models[1]} is {by[(models[0], precision)] / by[(models[1], precision)]:.1f}× "
                          f"as fast as {models[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
