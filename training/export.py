"""Export a trained checkpoint for shipping: fp16 weights, release metadata, SHA-256 beside it.

    python training/export.py runs/x/best.safetensors Resources/Models/scarnet_litemedsam_emidec.safetensors \
        --name ... --licence ... --metrics eval/summary.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.checkpoint import load_checkpoint, save_checkpoint
from ScarNetCore.io import atomic_path, sha256_of
from ScarNetCore.preprocessing import PreprocessConfig


def export(source: Path, target: Path, name: str, version: str, licence: str, metrics: dict | None) -> str:
    model, meta = load_checkpoint(source)
    keep = {k: meta[k] for k in ("training_data", "training_config") if k in meta}
    all_metrics = dict(meta.get("metrics", {}))
    if metrics:
        all_metrics.update(metrics)
    save_checkpoint(target, model, PreprocessConfig.from_dict(meta["preprocessing"]), dtype=torch.float16,
                    name=name, version=version, licence=licence, encoder=model.config.encoder,
                    metrics=all_metrics, **keep)
    digest = sha256_of(target)
    with atomic_path(target.with_suffix(".sha256")) as tmp:
        tmp.write_text(f"{digest}  {target.name}\n")
    return digest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--licence", required=True)
    parser.add_argument("--metrics", type=Path, help="JSON of named metric sets to add to metadata 'metrics' "
                        "(e.g. {\"test\": {...}})")
    args = parser.parse_args(argv)
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    digest = export(args.source, args.target, args.name, args.version, args.licence, metrics)
    print(f"{args.target}: {args.target.stat().st_size / 1e6:.1f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
