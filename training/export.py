"""Export a trained checkpoint for shipping: fp16 weights, release metadata, SHA-256 beside it.

    python training/export.py runs/x/best.safetensors Resources/Models/scarnet_litemedsam_emidec.safetensors \
        --name ... --licence ... --metrics eval/summary.json

Model v2 (cascade): SOURCE is the segment stage, --locate the locate stage (its checkpoint, or a v2
file whose locate stage and cascade settings are reused); both go into one file with each stage's geometry and the cascade
settings (--cascade KEY=VALUE, ScarNetCore.model.cascade.CascadeParams). Several SOURCEs make an ensemble
stage 2 whose probabilities are averaged (ScarNetCore.model.cascade.SegmentEnsemble); they must share the
crop geometry. Metadata other than the metrics comes from the first SOURCE, except the training
cases: an ensemble records the union of its members' cases (a refit member's train holds validation).
--refine adds the optional refine stage (a `data.stage: refine` checkpoint, or several: an ensemble; their cases
join the record, their validation metrics and training configs are listed, one per network).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.io.files import atomic_path, sha256_of
from ScarNetCore.model.cascade import LOCATE, CascadeParams, ScarNetCascade, SegmentEnsemble
from ScarNetCore.model.checkpoint import load_checkpoint, save_cascade, save_checkpoint
from ScarNetCore.model.metadata import ModelMetadata
from ScarNetCore.pipeline.preprocessing import PreprocessConfig


def stage_geometry(meta: ModelMetadata) -> PreprocessConfig:
    """The cascade-stage geometry a stage checkpoint's preprocessing records: its spacing, grid and
    percentiles (what a v2 file stores per stage; the PNG pixel size is the whole file's, left at its default)."""
    p = meta.preprocessing
    return PreprocessConfig(grid_size=int(p.grid_size), target_spacing_mm=float(p.target_spacing_mm),
                            percentiles=tuple(p.percentiles))


def export(sources: list[Path], target: Path, name: str, version: str, licence: str, metrics: dict | None,
           locate: Path | None = None, cascade: dict | None = None, refine: list[Path] | None = None) -> str:
    loaded = [load_checkpoint(source) for source in sources]
    model, meta = loaded[0]
    header = meta.header
    keep = {k: header[k] for k in ("training_data", "training_config") if k in header}
    all_metrics = dict(header.get("metrics", {}))
    if metrics:
        all_metrics.update(metrics)
    encoders = sorted({net.config.encoder for net, _ in loaded})
    release = dict(name=name, version=version, licence=licence, encoder="+".join(encoders), **keep)
    if locate is None and refine:
        raise ValueError("--refine needs --locate: the refine stage is part of a v2 model")
    if locate is None:
        if len(loaded) > 1:
            raise ValueError("several SOURCEs (an ensemble) need --locate: only a v2 stage 2 can be an ensemble")
        save_checkpoint(target, model, meta.preprocessing, dtype=torch.float16, metrics=all_metrics, **release)
    else:
        geometries = {stage_geometry(m) for _, m in loaded}
        if len(geometries) != 1:
            raise ValueError(f"the SOURCEs crop differently ({geometries}); an ensemble shares one crop")
        if len(loaded) == 1:
            segment = model
        else:  # the first member's own training numbers are not the ensemble's
            segment = SegmentEnsemble([net for net, _ in loaded])
            all_metrics.pop("validation", None)
            all_metrics["member_validation"] = [m.header.get("metrics", {}).get("validation") for _, m in loaded]
            release["member_training_configs"] = [m.header.get("training_config") for _, m in loaded]
            release.pop("training_data", None)   # the first member's cases are not the ensemble's
            union = _union_of_cases([m.header.get("training_data") for _, m in loaded])
            if union:
                release["training_data"] = union
        locator, locate_meta = load_checkpoint(locate)
        settings = {}
        if isinstance(locator, ScarNetCascade):  # reuse a v2 file's stage 1 and settings (--cascade on top)
            locate_geometry, settings = locator.geometry[LOCATE], locator.params.to_dict()
            all_metrics["locate_validation"] = locate_meta.header.get("metrics", {}).get("locate_validation")
            release["locate_training_config"] = locate_meta.header.get("locate_training_config")
            locator = locator.locate
        else:
            locate_geometry = stage_geometry(locate_meta)
            all_metrics["locate_validation"] = locate_meta.header.get("metrics", {}).get("validation")
            release["locate_training_config"] = locate_meta.header.get("training_config")
        refiner = None
        if refine:
            refiners = [load_checkpoint(path) for path in refine]
            crops = {stage_geometry(m) for _, m in refiners}
            if crops != geometries:
                raise ValueError(f"the refine stage must see stage 2's crop {next(iter(geometries))}, not {crops}")
            refiner = refiners[0][0] if len(refiners) == 1 else SegmentEnsemble([net for net, _ in refiners])
            all_metrics["refine_validation"] = [m.header.get("metrics", {}).get("validation") for _, m in refiners]
            release["refine_training_config"] = [m.header.get("training_config") for _, m in refiners]
            union = _union_of_cases([release.get("training_data")] + [m.header.get("training_data") for _, m in refiners])
            if union:
                release["training_data"] = union
        stages = ScarNetCascade(locator, segment, locate_geometry, geometries.pop(),
                                CascadeParams.from_dict({**settings, **(cascade or {})}), refiner)
        save_cascade(target, stages, dtype=torch.float16, metrics=all_metrics, **release)
    digest = sha256_of(target)
    with atomic_path(target.with_suffix(".sha256")) as tmp:
        tmp.write_text(f"{digest}  {target.name}\n")
    return digest


def _union_of_cases(records: list[dict | None]) -> dict | None:
    """One training-data record for an ensemble: each subset's cases over all members, first seen first."""
    if not records or any(r is None for r in records):
        return None
    cases = {}
    for record in records:
        for subset, ids in record["cases"].items():
            cases[subset] = list(dict.fromkeys(cases.get(subset, []) + list(ids)))
    return {**records[0], "cases": cases}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, nargs="+", help="the trained network; model v2: the segment stage "
                        "(several: an ensemble)")
    parser.add_argument("target", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--licence", required=True)
    parser.add_argument("--metrics", type=Path, help="JSON of named metric sets to add to metadata 'metrics' "
                        "(e.g. {\"test\": {...}})")
    parser.add_argument("--locate", type=Path, help="model v2: the locate-stage checkpoint (SOURCE is the segment stage)")
    parser.add_argument("--refine", type=Path, nargs="+", help="model v2: the optional refine-stage checkpoint "
                        "(data.stage refine; several: an ensemble)")
    parser.add_argument("--cascade", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model v2 settings, e.g. min_scar_ml=1.5 low_confidence=0.8")
    args = parser.parse_args(argv)
    metrics = json.loads(args.metrics.read_text(encoding="utf-8")) if args.metrics else None
    cascade = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.cascade)}
    digest = export(args.source, args.target, args.name, args.version, args.licence, metrics, args.locate, cascade,
                    args.refine)
    print(f"{args.target}: {args.target.stat().st_size / 1e6:.1f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
