"""Training configuration: one YAML file, every key documented in configs/default.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ScarNetCore.pipeline.device import PRECISIONS


@dataclass
class DataConfig:
    root: str = "../shared/data/emidec/slices"
    layout: str = "slices"                 # slices: <case>_sliceNNN.png folders; volumes: NIfTI/NRRD/MHA
    split_file: str | None = "training/configs/emidec_split.json"   # {"train": [...], "validation": [...], "test": [...]}
    folds: int | None = None               # k-fold by case instead of split_file (test cases still excluded)
    fold: int = 0
    label_map: dict | None = None          # e.g. {5: 3} for a dataset whose scar label is 5
    max_slices: int | None = None          # cap (smoke tests); None = all
    stage: str = "full"                    # full: v1 whole-slice network | locate / segment / refine: a cascade stage (v2)
    prior_dir: str | None = None           # refine: stage 2's probabilities per case (training/evaluate.py --save-probabilities)
    refit: bool = False                    # final fit on train ∪ validation with a recipe chosen before; ship last.safetensors


@dataclass
class ModelConfig:
    encoder: str = "litemedsam"            # litemedsam | medsam-vit-b | none (plain U-Net pathway)
    encoder_checkpoint: str | None = None  # medsam_vit_b.pth for medsam-vit-b
    encoder_input_size: int | None = None
    base_channels: int = 16
    trainable_encoder_stages: int = 0      # 0 frozen, N = last N stages, -1 = all (GPU full fine-tuning)
    init_checkpoint: str | None = None     # start from this ScarNet .safetensors (e.g. the bundled model)
    grid_size: int | None = None           # None: the stage's grid (256 full, 224 locate, 128 segment)
    spacing_mm: float | None = None        # cascade stage: None: the stage's spacing (2 mm locate, 1.25 mm segment)
    in_channels: int = 1                   # segment and refine stages: 3 = the slice between its neighbours (2.5-D)
    remote_contrast: bool = False          # refine stage: also each slice in SDs from stage 2's healthy myocardium
    stack_mixing: bool = False             # refine stage: whole stacks per item, features mix across slices (3-D view);
                                           # optim.batch_size then counts stacks


@dataclass
class OptimConfig:
    batch_size: int = 8
    grad_accumulation: int = 1
    optimizer: str = "adamw"               # adamw | sgd
    lr: float = 2e-3
    encoder_lr: float = 1e-4               # for trainable encoder stages
    weight_decay: float = 1e-4
    schedule: str = "cosine"               # cosine | constant
    warmup_epochs: int = 1
    epochs: int = 60
    amp: str = "auto"                      # auto (bf16 where native, fp16/bf16 on CUDA) | fp32 | bf16 | fp16 (CUDA)
    seed: int = 2026
    workers: int = 0
    cache_features: bool = True            # frozen encoder: encode each augmented view once
    cache_views: int = 2
    augment_cached: bool = False           # augment cached views again on the fly (features follow the geometry)
    max_steps_per_epoch: int | None = None

    def __post_init__(self):
        check_precision(self.amp)


def check_precision(amp: str) -> None:
    """optim.amp takes the engine's precision words (ScarNetCore.pipeline.device.PRECISIONS)."""
    if amp == "none":
        raise ValueError("optim.amp: none is now written fp32 (the precision words are auto, fp32, bf16 and fp16)")
    if amp not in PRECISIONS:
        raise ValueError(f"optim.amp {amp!r}: choose {', '.join(PRECISIONS)}")


@dataclass
class TrainConfig:
    output_dir: str = "runs/scarnet"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: dict = field(default_factory=dict)       # LossConfig keys (λ1 λ2 λ3, α β γ, class_weights)
    augment: dict = field(default_factory=dict)    # AugmentConfig keys
    views: dict = field(default_factory=dict)      # ViewConfig keys (cascade stages)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        sections = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs = {}
        for key, value in data.items():
            if key in sections:
                allowed = {f.name for f in fields(sections[key])}
                bad = set(value or {}) - allowed
                if bad:
                    raise ValueError(f"unknown key(s) in {key}: {', '.join(sorted(bad))}")
                kwargs[key] = sections[key](**(value or {}))
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        for item in overrides or []:  # section.key=value, value parsed as YAML
            key, _, value = item.partition("=")
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = yaml.safe_load(value)
        return cls.from_dict(data)
