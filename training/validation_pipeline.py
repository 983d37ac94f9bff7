"""Rebuild the validation pipeline from the bundled v2 file: its stage 1 and settings, and the stage-2
networks it carries that were trained on the training cases only (the "validation pair"), optionally
with a refine stage trained on the training cases only.

    python training/validation_pipeline.py runs/validation_pair.safetensors
    python training/validation_pipeline.py runs/validation_pipeline.safetensors --refine runs/refine/best.safetensors
    python training/validation_pipeline.py runs/pair_2_5d.safetensors --member 1   # one of the pair, alone
                                                   # (a refine run's model.init_checkpoint)

The refitted members (trained on training + validation) have seen the validation cases, so scores of
the shipped file on them select nothing; this file's do. Which members qualify is read from their
training configurations (data.refit), never assumed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.model.cascade import ScarNetCascade, SegmentEnsemble
from ScarNetCore.model.checkpoint import load_checkpoint, save_cascade, save_checkpoint
from ScarNetCore.resources import default_model_path

NOTE = "validation pipeline: the bundled file's stage 1 and settings, stage-2 members trained on the training cases only"


def training_only_members(meta: dict) -> list[int]:
    """Indices of the stage-2 members whose training config did not refit on the validation cases."""
    configs = meta.get("member_training_configs") or []
    return [i for i, c in enumerate(configs) if c and not c.get("data", {}).get("refit")]


def build(bundled: Path, refine: Path | None = None) -> tuple[ScarNetCascade, dict]:
    cascade, info = load_checkpoint(bundled)
    meta = info.header
    if not isinstance(cascade, ScarNetCascade) or not isinstance(cascade.segment, SegmentEnsemble):
        raise ValueError(f"{bundled}: not a v2 file with an ensemble stage 2")
    keep = training_only_members(meta)
    if not keep:
        raise ValueError(f"{bundled}: no stage-2 member was trained on the training cases only")
    members = [cascade.segment.members[i] for i in keep]
    segment = members[0] if len(members) == 1 else SegmentEnsemble(members)
    refiner, refine_info = load_checkpoint(refine) if refine else (None, None)
    refine_meta = refine_info.header if refine_info is not None else {}
    pipeline = ScarNetCascade(cascade.locate, segment, cascade.geometry["locate"], cascade.geometry["segment"],
                              cascade.params, refiner)
    record = {"name": "validation-pipeline", "version": meta.get("version"), "licence": meta.get("licence"),
              "note": NOTE, "source": bundled.name, "members": keep,
              "member_training_configs": [meta["member_training_configs"][i] for i in keep]}
    if refine:
        record["refine_training_config"] = [refine_meta.get("training_config")]
        record["refine_validation"] = refine_meta.get("metrics", {}).get("validation")
    return pipeline, record


def save_member(pipeline: ScarNetCascade, record: dict, position: int, target: Path) -> Path:
    """One network of the pipeline's stage 2 as a stage-2 checkpoint of its own (fp32)."""
    segment = pipeline.segment
    member = segment.members[position] if isinstance(segment, SegmentEnsemble) else segment
    config = record["member_training_configs"][position]
    return save_checkpoint(target, member, pipeline.geometry["segment"], name=f"validation-member-{position}",
                           licence=record["licence"], note=NOTE, training_config=config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("--bundled", type=Path, default=None, help="v2 file (default: the bundled model)")
    parser.add_argument("--refine", type=Path, help="a refine-stage checkpoint trained on the training cases only")
    parser.add_argument("--member", type=int, help="write only this network of the pipeline's stage 2 (0-based)")
    args = parser.parse_args(argv)
    pipeline, record = build(args.bundled or default_model_path(), args.refine)
    args.target.parent.mkdir(parents=True, exist_ok=True)
    if args.member is not None:
        save_member(pipeline, record, args.member, args.target)
        print(f"{args.target}: stage-2 member {args.member} of the validation pipeline "
              f"(member {record['members'][args.member]} of {record['source']})")
        return 0
    save_cascade(args.target, pipeline, dtype=torch.float16, **record)
    print(f"{args.target}: members {record['members']} of {record['source']}"
          f"{' + refine ' + str(args.refine) if args.refine else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
