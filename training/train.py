"""Train ScarNet: `python training/train.py --config CONFIG.yaml` (or `scarnet-train`).

Single process, or several under `torchrun --nproc_per_node=N` (DistributedDataParallel; gloo on
CPU, NCCL on GPU). A checkpoint of the full training state is written atomically after every epoch;
rerunning the same command resumes from it, so a killed run loses at most the epoch in progress.
The model selected on the validation split (never the test split) is exported as
`best.safetensors` in the one ScarNet checkpoint format; a refit (data.refit) trains on train ∪ validation
with a recipe chosen before and ships the last epoch, `last.safetensors`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScarNetCore.io.files import atomic_path, write_csv
from ScarNetCore.model import ScarNet, ScarNetConfig
from ScarNetCore.model.cascade import LOCATE, LOCATE_GEOMETRY, REFINE, SEGMENT, SEGMENT_GEOMETRY
from ScarNetCore.model.checkpoint import load_checkpoint, save_checkpoint
from ScarNetCore.pipeline.device import autocast, autocast_dtype
from ScarNetCore.pipeline.preprocessing import PreprocessConfig
from training.augment import AugmentConfig, augment
from training.cascade_data import StageViews, ViewConfig, collate_stacks, lv_crops, read_priors
from training.config import TrainConfig
from training.data import case_ids, read_dataset, read_split
from training.feature_cache import CachedViews, build_cache
from training.losses import LossConfig, ScarNetLoss
from training.metrics import structure_dice, summarize_cases

STATE_FILE = "train_state.pt"
LOG_FILE = "log.csv"   # one row per epoch (ScarNetCore.io.files.write_csv)


class AugmentedSlices(torch.utils.data.Dataset):
    """On-the-fly augmentation; randomness depends on (seed, epoch, index) so resume is exact."""

    def __init__(self, samples, cfg: AugmentConfig, seed: int, train: bool = True):
        self.samples, self.cfg, self.seed, self.train, self.epoch = samples, cfg, seed, train, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        s = self.samples[index]
        image, mask = s.image, s.mask
        if self.train:
            image, mask = augment(image, mask, np.random.default_rng([self.seed, self.epoch, index]), self.cfg)
        return {"image": torch.from_numpy(np.ascontiguousarray(image))[None],
                "mask": torch.from_numpy(mask.astype(np.int64))}


def split_cases(cfg: TrainConfig) -> dict[str, list[str]]:
    d = cfg.data
    if d.split_file:
        split = read_split(d.split_file)
        split = {k: split.get(k, []) for k in ("train", "validation", "test")}
        if d.refit:  # the validation cases join training; their score is still logged but selects nothing
            split["train"] = split["train"] + split["validation"]
        return split
    if d.refit:
        raise ValueError("data.refit needs a split_file (k-fold runs keep their held-out fold)")
    if not d.folds:
        raise ValueError("data: give split_file or folds")
    cases = case_ids(d.root, d.layout)
    order = np.random.default_rng(cfg.optim.seed).permutation(cases).tolist()
    val = order[d.fold::d.folds]
    return {"train": [c for c in order if c not in val], "validation": val, "test": []}


def setup_distributed():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


FIRST_CONV = "down.0.body.0.weight"   # ScarNet's first convolution: the only layer that sees the input channels


def initialise_from(model: ScarNet, checkpoint: str) -> None:
    """Start from a ScarNet checkpoint's weights (e.g. fine-tune the bundled model on your data).

    A refine stage may start from a stage-2 network of the same shape: the weights its first layer
    gives stage 2's probabilities (and the remote contrast) start at zero, so it begins as that network
    and learns to use them. Stack mixing, new or kept, starts as the checkpoint has it (zero if new)."""
    source, meta = load_checkpoint(checkpoint)
    if meta.config is None:
        raise ValueError(f"model.init_checkpoint {checkpoint}: a v2 file holds several networks; give one network's "
                         "checkpoint (e.g. training/validation_pipeline.py --member)")
    theirs = meta.config
    inputs = dict(prior=model.config.prior, remote_contrast=model.config.remote_contrast,
                  stack_mixing=model.config.stack_mixing)
    if dataclasses.replace(theirs, **inputs) != model.config:
        ours = model.config.to_dict()
        differ = {k: (v, ours[k]) for k, v in theirs.to_dict().items() if v != ours[k]}
        raise ValueError(f"model.init_checkpoint {checkpoint}: its network differs from the config "
                         f"(checkpoint vs config: {differ}); set the model keys to match it")
    state = source.state_dict()
    weight = state[FIRST_CONV]
    missing = model.config.first_layer_channels - weight.shape[1]
    if missing > 0:   # new inputs come after the ones the checkpoint saw, in the order the network takes them
        state[FIRST_CONV] = torch.cat([weight, weight.new_zeros(weight.shape[0], missing, *weight.shape[2:])], 1)
    if model.config.stack_mixing and not theirs.stack_mixing:   # new mixing layers keep their zero start
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("mixing.")})
    model.load_state_dict(state)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def training_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `optim.amp`, in the engine's precision words auto | fp32 | bf16 | fp16 (None: fp32).

    auto follows the inference rule (ScarNetCore.pipeline.device.autocast_dtype): bf16 only where the CPU
    runs it natively. Emulated bf16 is several times slower than fp32 (measured: TinyViT encoder
    33 s vs 4 s per slice on a 2-core AMD EPYC without AVX512-BF16).
    """
    dtype = autocast_dtype(device, amp)   # amp was checked when the config was read
    if dtype == torch.float16 and device.type != "cuda":
        return None  # fp16 autocast is a GPU feature; CPUs use bf16 or fp32
    return dtype


def lr_factor(step: int, steps_per_epoch: int, cfg) -> float:
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = max(cfg.epochs * steps_per_epoch, 1)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


STAGE_GEOMETRY = {LOCATE: LOCATE_GEOMETRY, SEGMENT: SEGMENT_GEOMETRY, REFINE: SEGMENT_GEOMETRY}
STAGE_CLASSES = {"full": 5, LOCATE: 2, SEGMENT: 5, REFINE: 5}


def validation_score(metrics: dict) -> float:
    if "lv_dice" in metrics:
        return float(metrics["lv_dice"])
    return float(np.nanmean([metrics["myocardium_dice"], metrics["scar_dice"]]))


@torch.no_grad()
def validate(model, loader, device, autocast) -> dict:
    model.eval()
    per_case_pred, per_case_ref = {}, {}
    for batch in loader:
        features = batch["features"].to(device) if "features" in batch else None
        with autocast():
            logits = model(batch["image"].to(device), features, batch.get("stacks"))
        pred = logits.argmax(1).cpu().numpy()
        for case, p, r in zip(batch["case"], pred, batch["mask"].numpy()):
            per_case_pred.setdefault(case, []).append(p)
            per_case_ref.setdefault(case, []).append(r)
    if model.config.num_classes == 2:  # the locate stage: LV or not
        pred, ref = (np.concatenate([np.stack(v[c]).ravel() for c in v]) for v in (per_case_pred, per_case_ref))
        return {"lv_dice": float(2 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1))}
    per_case = {c: structure_dice(np.stack(per_case_pred[c]), np.stack(per_case_ref[c])) for c in per_case_pred}
    return summarize_cases(per_case)


class WithCase(torch.utils.data.Dataset):
    def __init__(self, base, cases):
        self.base, self.cases = base, cases

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return {**self.base[i], "case": self.cases[i]}


# --- the run, step by step --------------------------------------------------------------------------
# run() calls these in this order; the order is part of the result: the model's initial weights come
# from the seeded global RNG after the data is read, exactly as in every earlier run and its resume.

def check_stage(cfg: TrainConfig) -> str:
    """The config's cascade stage, after checking the settings that go with it."""
    stage = cfg.data.stage
    if stage not in STAGE_CLASSES:
        raise ValueError(f"data.stage {stage!r}: choose full, {LOCATE}, {SEGMENT} or {REFINE}")
    if (stage == REFINE) != bool(cfg.data.prior_dir):
        raise ValueError(f"data.prior_dir (stage 2's probabilities, training/evaluate.py --save-probabilities) "
                         f"goes with data.stage {REFINE}, and only with it")
    if cfg.model.stack_mixing and stage != REFINE:
        raise ValueError(f"model.stack_mixing (whole stacks, a 3-D view) is for data.stage {REFINE}: inference runs "
                         "stage 1 and stage 2 on batches of slices, the refine stage on the whole stack")
    if cfg.model.spacing_mm and stage == "full":
        raise ValueError("model.spacing_mm sets a cascade stage's spacing; the full-slice model uses the reader's grid")
    return stage


def read_slices(cfg: TrainConfig, split: dict) -> tuple[list, list]:
    """The training and validation slices on the reader's grid (v1's: 1.25 mm, 320 mm), from which cascade
    stages draw their views at run time."""
    read = lambda cases: read_dataset(cfg.data.root, cfg.data.layout, config=PreprocessConfig(),
                                      label_map=cfg.data.label_map, cases=set(cases))
    train_samples, val_samples = read(split["train"]), read(split["validation"])
    if cfg.data.max_slices:
        train_samples, val_samples = train_samples[:cfg.data.max_slices], val_samples[:cfg.data.max_slices]
    return train_samples, val_samples


def stage_preprocessing(cfg: TrainConfig, stage: str) -> PreprocessConfig:
    """The preprocessing recorded in the checkpoint: the reader's for the full-slice model, the stage's
    geometry (model.grid_size and model.spacing_mm override it) for a cascade stage, whose views
    (training/cascade_data.py) are drawn at it."""
    if stage == "full":
        return PreprocessConfig()
    default = STAGE_GEOMETRY[stage]
    return dataclasses.replace(default, grid_size=cfg.model.grid_size or default.grid_size,
                               target_spacing_mm=cfg.model.spacing_mm or default.target_spacing_mm)


def build_model(cfg: TrainConfig, stage: str, grid: int) -> ScarNet:
    mc = cfg.model
    return ScarNet(ScarNetConfig(encoder=mc.encoder, encoder_checkpoint=mc.encoder_checkpoint,
                                 encoder_input_size=mc.encoder_input_size, base_channels=mc.base_channels,
                                 num_classes=STAGE_CLASSES[stage], grid_size=grid, in_channels=mc.in_channels,
                                 prior=stage == REFINE, remote_contrast=mc.remote_contrast,
                                 stack_mixing=mc.stack_mixing))


def uses_feature_cache(cfg: TrainConfig, model: ScarNet, stage: str) -> bool:
    """The CPU recipe: a frozen encoder's features of each view are computed once and cached."""
    use_cache = cfg.optim.cache_features and cfg.model.trainable_encoder_stages == 0 and model.encoder is not None \
        and stage != LOCATE
    if (cfg.model.in_channels != 1 or stage == REFINE) and (stage not in (SEGMENT, REFINE) or use_cache):
        raise ValueError("model.in_channels > 1 (neighbouring slices) and data.stage refine need on-the-fly views of "
                         "stage 2's crop (data.stage segment or refine; encoder none, or optim.cache_features false)")
    return use_cache


def build_datasets(cfg: TrainConfig, stage: str, model: ScarNet, geometry: PreprocessConfig, split: dict,
                   train_samples: list, val_samples: list, use_cache: bool, amp_dtype, out: Path, main: bool,
                   world: int, say):
    """(training set, validation set whose items name their case): cascade views drawn on the fly, the
    frozen encoder's cached views, or augmented whole slices (the full-slice model without a cache)."""
    aug_cfg = AugmentConfig.from_dict(cfg.augment)
    source_spacing = PreprocessConfig().target_spacing_mm  # the reader's grid, from which stage views are drawn
    if stage == SEGMENT and use_cache:
        # the hybrid on CPU: cache the encoder's view of each LV crop, augment views as in the full recipe
        train_samples, val_samples = (lv_crops(s, geometry, source_spacing) for s in (train_samples, val_samples))
    if stage != "full" and not use_cache:
        views = ViewConfig.from_dict(cfg.views)
        context = cfg.model.in_channels // 2
        priors = read_priors(cfg.data.prior_dir, split["train"] + split["validation"]) if stage == REFINE else None
        stacks = cfg.model.stack_mixing
        train_set = StageViews(train_samples, stage, geometry, source_spacing, cfg.optim.seed, views, aug_cfg,
                               context=context, priors=priors, stacks=stacks)
        val_set = StageViews(val_samples, stage, geometry, source_spacing, cfg.optim.seed, views, aug_cfg,
                             train=False, context=context, priors=priors, stacks=stacks)
        return train_set, WithCase(val_set, val_set.case_of_item)
    if use_cache:
        cache_root = out / "feature_cache"
        if main:
            build_cache(model, train_samples, cache_root / "train", cfg.optim.cache_views, cfg.optim.seed, aug_cfg,
                        dtype=amp_dtype, log=say)
            build_cache(model, val_samples, cache_root / "validation", 1, cfg.optim.seed, aug_cfg, dtype=amp_dtype,
                        log=say)
        if world > 1:
            dist.barrier()
        train_set = CachedViews(cache_root / "train", seed=cfg.optim.seed, cases=set(split["train"]),
                                augment=aug_cfg if cfg.optim.augment_cached else None)
        val_set = CachedViews(cache_root / "validation", seed=cfg.optim.seed, cases=set(split["validation"]))
        return train_set, WithCase(val_set, val_set.cases)
    train_set = AugmentedSlices(train_samples, aug_cfg, cfg.optim.seed)
    val_set = AugmentedSlices(val_samples, aug_cfg, cfg.optim.seed, train=False)
    return train_set, WithCase(val_set, [s.case for s in val_samples])


@dataclasses.dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    validation: torch.utils.data.DataLoader
    sampler: torch.utils.data.DistributedSampler | None
    generator: torch.Generator      # the training shuffle, reseeded every epoch


def build_loaders(cfg: TrainConfig, train_set, val_set, rank: int, world: int) -> Loaders:
    sampler = torch.utils.data.DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.optim.seed) \
        if world > 1 else None
    generator = torch.Generator().manual_seed(cfg.optim.seed)
    collate = collate_stacks if cfg.model.stack_mixing else None   # whole stacks: their slices one after the other
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.optim.batch_size, shuffle=sampler is None,
                                               sampler=sampler, generator=generator, drop_last=len(train_set) > cfg.optim.batch_size * world,
                                               num_workers=cfg.optim.workers, collate_fn=collate)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.optim.batch_size, num_workers=cfg.optim.workers,
                                             collate_fn=collate)
    return Loaders(train_loader, val_loader, sampler, generator)


def build_optimiser(cfg: TrainConfig, model: ScarNet, batches_per_epoch: int):
    """(optimizer, scheduler, optimizer steps per epoch): the U-Net, fusion and decoder at optim.lr,
    trainable encoder stages at optim.encoder_lr; warm-up then the schedule, per optimizer step."""
    head_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    enc_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    groups = [{"params": head_params, "lr": cfg.optim.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.optim.encoder_lr})
    if cfg.optim.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay)
    elif cfg.optim.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg.optim.weight_decay)
    else:
        raise ValueError(f"optimizer {cfg.optim.optimizer!r}: choose adamw or sgd")
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.optim.grad_accumulation)
    if cfg.optim.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.optim.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, cfg.optim))
    return optimizer, scheduler, steps_per_epoch


@dataclasses.dataclass
class Trainer:
    """What one optimizer run holds: the network (and its DDP wrapper), loss, optimizer, schedule,
    gradient scaler and autocast; and where it is: the next epoch, the best score so far, the log."""
    model: ScarNet
    net: torch.nn.Module
    device: torch.device
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    start_epoch: int = 0
    best_score: float = -1.0
    history: list = dataclasses.field(default_factory=list)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def state(self, epoch: int) -> dict:
        """train_state.pt's contents after `epoch` (0-based)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "best_score": self.best_score, "history": self.history}


def resume(trainer: Trainer, state_path: Path, say) -> None:
    """Continue from a run's own train_state.pt, where there is one."""
    if not state_path.is_file():
        return
    # our own file, still loaded weights_only: it holds tensors and plain containers only
    state = torch.load(state_path, map_location=trainer.device, weights_only=True)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.start_epoch, trainer.best_score, trainer.history = state["epoch"] + 1, state["best_score"], state["history"]
    say(f"resumed from {state_path} after epoch {state['epoch'] + 1}")


def train_epoch(trainer: Trainer, loaders: Loaders, train_set, cfg: TrainConfig, epoch: int) -> dict:
    """One epoch of optimizer steps; returns the mean of each loss term over its batches."""
    trainer.net.train()
    train_set.set_epoch(epoch)
    if loaders.sampler is not None:
        loaders.sampler.set_epoch(epoch)
    # shuffle order from (seed, epoch) alone: a resumed run replays the same batches as an uninterrupted one
    loaders.generator.manual_seed(cfg.optim.seed + epoch)
    optimizer, scaler, accumulation = trainer.optimizer, trainer.scaler, cfg.optim.grad_accumulation
    totals, count, step = {}, 0, 0
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(loaders.train):
        features = batch["features"].to(trainer.device) if "features" in batch else None
        with trainer.autocast():
            logits = trainer.net(batch["image"].to(trainer.device), features, batch.get("stacks"))
        losses = trainer.criterion(logits.float(), batch["mask"].to(trainer.device))
        scaler.scale(losses["loss"] / accumulation).backward()
        if (i + 1) % accumulation == 0 or i + 1 == len(loaders.train):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            trainer.scheduler.step()
            step += 1
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach())
        count += 1
        if cfg.optim.max_steps_per_epoch and step >= cfg.optim.max_steps_per_epoch:
            break
    return {k: v / max(count, 1) for k, v in totals.items()}


def finish_epoch(trainer: Trainer, loaders: Loaders, cfg: TrainConfig, epoch: int, train_loss: dict, seconds_from: float,
                 preprocessing: PreprocessConfig, meta: dict, out: Path, writer, say) -> None:
    """Rank 0 after an epoch: validate, log, write best/last checkpoints, log.csv and train_state.pt."""
    metrics = validate(trainer.model, loaders.validation, trainer.device, trainer.autocast)
    score = validation_score(metrics)
    seconds = time.time() - seconds_from
    row = {"epoch": epoch + 1, **{f"train_{k}": round(v, 5) for k, v in train_loss.items()},
           **{f"val_{k}": round(v, 4) for k, v in metrics.items()}, "lr": trainer.scheduler.get_last_lr()[0],
           "seconds": round(seconds, 1)}
    trainer.history.append(row)
    if score > trainer.best_score and not cfg.data.refit:  # a refit trained on validation: nothing to select
        trainer.best_score = float(score)
        save_checkpoint(out / "best.safetensors", trainer.model, preprocessing,
                        metrics={"validation": {**metrics, "epoch": epoch + 1}}, **meta)
    save_checkpoint(out / "last.safetensors", trainer.model, preprocessing, **meta)
    write_csv(trainer.history, out / LOG_FILE)  # before the state: a run killed once the state exists has its log
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(trainer.state(epoch), tmp)
    if writer is not None:
        for k, v in row.items():
            if k != "epoch":
                writer.add_scalar(k, v, epoch + 1)
    shown = " ".join(f"{k.replace('_dice', '')} {v:.3f}" for k, v in metrics.items())
    say(f"epoch {epoch + 1}/{cfg.optim.epochs} loss {train_loss['loss']:.4f} val Dice {shown} "
        f"{seconds:.0f}s{' *best' if trainer.best_score == score else ''}")


def run(cfg: TrainConfig, log=print) -> Path:
    rank, world = setup_distributed()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.optim.seed)
    main = rank == 0
    say = log if main else (lambda *a, **k: None)

    stage = check_stage(cfg)
    split = split_cases(cfg)
    train_samples, val_samples = read_slices(cfg, split)
    say(f"data: {len(train_samples)} training slices ({len(split['train'])} cases), "
        f"{len(val_samples)} validation slices ({len(split['validation'])} cases); world size {world}")

    preprocessing = stage_preprocessing(cfg, stage)   # recorded in the checkpoint; a stage's geometry
    model = build_model(cfg, stage, cfg.model.grid_size or preprocessing.grid_size)
    state_path = out / STATE_FILE
    if cfg.model.init_checkpoint and not state_path.is_file():  # a resumed run continues from its own state instead
        initialise_from(model, cfg.model.init_checkpoint)
        say(f"initialised from {cfg.model.init_checkpoint}")
    model = model.to(device)
    if model.encoder is not None:
        model.encoder.set_trainable_stages(cfg.model.trainable_encoder_stages)
    amp_dtype = training_dtype(cfg.optim.amp, device)
    say(f"precision: {amp_dtype or torch.float32} autocast on {device}")

    use_cache = uses_feature_cache(cfg, model, stage)
    train_set, val_set = build_datasets(cfg, stage, model, preprocessing, split, train_samples, val_samples, use_cache,
                                        amp_dtype, out, main, world, say)
    loaders = build_loaders(cfg, train_set, val_set, rank, world)
    optimizer, scheduler, _ = build_optimiser(cfg, model, len(loaders.train))
    criterion = ScarNetLoss(LossConfig.from_dict(cfg.loss), model.config.num_classes).to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    trainer = Trainer(model, model, device, criterion, optimizer, scheduler, scaler, amp_dtype)
    resume(trainer, state_path, say)
    trainer.net = DistributedDataParallel(model) if world > 1 else model

    meta = {"name": Path(cfg.output_dir).name, "licence": "see training data licence",
            "training_data": {"root": str(cfg.data.root), "layout": cfg.data.layout,
                              "cases": {k: v for k, v in split.items()}},
            "training_config": json.loads(json.dumps(cfg, default=lambda o: o.__dict__))}
    writer = _tensorboard(out) if main else None
    for epoch in range(trainer.start_epoch, cfg.optim.epochs):
        t0 = time.time()
        train_loss = train_epoch(trainer, loaders, train_set, cfg, epoch)
        if main:
            finish_epoch(trainer, loaders, cfg, epoch, train_loss, t0, preprocessing, meta, out, writer, say)
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
    return out / ("last.safetensors" if cfg.data.refit else "best.safetensors")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; log.csv is always written
        return None
    return SummaryWriter(str(out / "tensorboard"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (see training/configs/default.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config keys")
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config, args.set)
    best = run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{'final' if cfg.data.refit else 'best'} model: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
