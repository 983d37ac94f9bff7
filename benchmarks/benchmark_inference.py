"""Inference speed and memory of a ScarNet model, fp32 vs bf16, and how far bf16 changes the labels.

    python benchmarks/benchmark_inference.py [--model CKPT] [--large] [--device cpu] [--batch-size 8]

Default study: 10 slices of 256×256 (1.25 mm, 8 mm slices); --large: 40 slices of 512×512. Each
precision runs in a fresh process so that its peak RSS (ru_maxrss) is its own; tracemalloc adds the
peak of host numpy buffers during segment(). A warm-up slice runs before timing (one-time kernel
selection is not throughput). Without --model the bundled model is used; if it is absent, a randomly
initialised ScarNet (pretrained LiteMedSAM encoder) stands in: same cost, meaningless labels.
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


def worker(args) -> None:
    import torch

    from ScarNetCore.inference import Segmenter

    image = sitk.ReadImage(args.study)
    segmenter = Segmenter(None if args.model == "bundled" else args.model, device=args.device,
                          precision=args.precision)
    segmenter.segment(image[:, :, :1], batch_size=1)  # warm-up
    tracemalloc.start()
    start = time.perf_counter()
    result = segmenter.segment(image, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.save(args.labels_out, sitk.GetArrayFromImage(result.labels))
    print(json.dumps({
        "precision": args.precision, "autocast": str(segmenter.dtype), "seconds": seconds,
        "slices_per_s": image.GetSize()[2] / seconds, "threads": torch.get_num_threads(),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "numpy_peak_mb": traced_peak / 1e6,
    }))


def resolve_model(model: str | None, workdir: Path) -> tuple[str, str]:
    from ScarNetCore.resources import default_model_path

    if model:
        return model, model
    if default_model_path().is_file():
        return "bundled", str(default_model_path())
    import torch

    from ScarNetCore.checkpoint import save_checkpoint
    from ScarNetCore.model import ScarNet, ScarNetConfig

    print(f"note: no bundled model at {default_model_path()}; timing a randomly initialised ScarNet "
          "(pretrained LiteMedSAM encoder) instead: same cost, meaningless labels", flush=True)
    torch.manual_seed(0)
    path = save_checkpoint(workdir / "random_scarnet.safetensors", ScarNet(ScarNetConfig()), name="random-init")
    return str(path), str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ScarNet .safetensors checkpoint (default: bundled model)")
    parser.add_argument("--large", action="store_true", help="40 slices of 512×512 instead of 10 of 256×256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    slices, size = (40, 512) if args.large else (10, 256)
    with tempfile.TemporaryDirectory(prefix="scarnet-bench-") as tmp:
        workdir = Path(tmp)
        model_arg, model_shown = resolve_model(args.model, workdir)
        study = workdir / "study.nii.gz"
        sitk.WriteImage(phantom_study(slices, size), str(study))
        print(f"model: {model_shown}\nstudy: {slices} slices × {size}×{size} (phantom), device {args.device}, "
              f"batch size {args.batch_size}")
        rows, labels = [], {}
        for precision in args.precisions.split(","):
            out = workdir / f"labels_{precision}.npy"
            proc = subprocess.run([sys.executable, __file__, "--worker", "--precision", precision, "--study", str(study),
                                   "--labels-out", str(out), "--model", model_arg, "--device", args.device,
                                   "--batch-size", str(args.batch_size)], capture_output=True, text=True)
            if proc.returncode:
                print(f"{precision}: failed\n{proc.stderr.strip().splitlines()[-1]}")
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            labels[precision] = np.load(out)
        print(f"{'precision':<10}{'autocast':<16}{'seconds':>9}{'slices/s':>10}{'peak RSS MB':>13}{'numpy peak MB':>15}")
        for r in rows:
            print(f"{r['precision']:<10}{r['autocast']:<16}{r['seconds']:>9.2f}{r['slices_per_s']:>10.2f}"
                  f"{r['ru_maxrss_mb']:>13.0f}{r['numpy_peak_mb']:>15.1f}")
        if rows:
            print(f"torch threads: {rows[0]['threads']}")
        if "fp32" in labels and len(labels) > 1:
            for precision, other in labels.items():
                if precision != "fp32":
                    agree = 100.0 * float((other == labels["fp32"]).mean())
                    print(f"voxel agreement {precision} vs fp32: {agree:.3f} % "
                          f"({int((other != labels['fp32']).sum())} of {other.size} voxels differ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
